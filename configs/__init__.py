"""Hydra configs (a package so that installed copies find them as pkg://configs)."""
