"""What a trained network says about photos: evaluation numbers (metrics), scoring a run (evaluate), figures
(charts), class activation maps (cam), and the data health check (health: out-of-fold predictions and features
of every photo)."""
