"""modules.paths: only what RefDrop reads (set per test by fakehost.activated)."""
import os

models_path = os.path.join(os.getcwd(), "models")
data_path = os.getcwd()
