"""What every stage shares, and imports nothing above it: the settings (config), the backbone registry
(backbones), the run-folder contract (runs), the workspace's folders (workspace), progress records (progress) and
text made safe to show (safetext)."""
