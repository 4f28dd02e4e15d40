"""deepfake-detector: tell real faces from fakes.

Data flows one way: files -> ``data`` -> a model from ``models`` (built on ``nn``) ->
``train`` / ``evaluate`` / ``predict`` -> the CLI and the web app.
"""

__version__ = "0.1.0"
