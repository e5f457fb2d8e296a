"""EfficientNet Studio with training, for Streamlit Community Cloud (Main file path: train_demo/streamlit_app.py).

Community Cloud installs the dependency file beside the entrypoint before the one at the repository's root, so this
folder's requirements.txt (the train profile: TensorFlow) applies here while the root's requirements.txt stays the
serve profile that Heroku and the serve demo read. The app itself is the root's: core/ and pages/ are imported from
the repository's root, which Streamlit does not put on the import path for a script in a sub-folder.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pages._app import run_app  # noqa: E402 (after the root is importable)

run_app()
