"""Learning from label proportions (LLP): the DLLP proportion loss, belief-propagation
pseudo-labels, and the supervised branch that trains on bags.

Making bags is the data layer's: :mod:`fedlabel.data.bags` (the Bags type, bag ids and counts,
BpParams) and :mod:`fedlabel.data.label_dp` (the noisy release). This package imports from
there, never the other way round; its submodules are imported directly (``fedlabel.llp.bp``)."""
