"""Training runs end to end: the trainer process (train), starting, queueing and stopping it (jobs), hosted-demo
limits (hosting), and the recipe benchmarks (recipes, featurestudy)."""
