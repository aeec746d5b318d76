"""Kubeflow components: one thin lightweight-Python component per stage.

Each body imports affectflow (installed in the project images, and in this venv for kfp.local),
calls one library stage function and shapes its files into typed artifacts. Component modules do
not use `from __future__ import annotations`: KFP reads the annotations to type inputs/outputs.
"""
