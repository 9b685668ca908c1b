"""Hydra configs, installed as the package fedlabel._configs (pkg://fedlabel._configs)."""
