"""Kubeflow pipeline definitions (compiled IR in compiled/)."""
