"""Learning from label proportions (LLP): label-DP on bag counts, the DLLP proportion loss,
belief-propagation pseudo-labels, and the supervised branch that trains on bags.

The bag data type itself is :class:`fedlabel.data.bags.Bags`. Submodules are imported directly
(``fedlabel.llp.bp`` etc.); this package imports nothing so that the data layer can use
:mod:`fedlabel.llp.label_dp` without a cycle."""
