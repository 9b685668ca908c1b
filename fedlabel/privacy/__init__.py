"""Differential privacy: DP-SGD for client training (record-level), client-level central DP,
and the accountants that turn what was run into epsilon. Imports no Flower."""
