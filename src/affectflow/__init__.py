"""affectflow: speech emotion recognition with generative and adversarial training, as MLOps pipelines."""

__version__ = "0.1.0"
