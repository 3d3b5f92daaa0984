r"""CONTA: context adjustment by backdoor intervention (Zhang et al., NeurIPS 2020).

The confounder C is a set of class prototypes (average masks). The intervention

.. math:: P(Y \mid do(X)) = \sum_i P(Y \mid X, M = f(X, c_i))\, P(c_i)

is approximated (normalised weighted geometric mean: the expectation moves inside the sigmoid, exact for a
last layer that is linear in M) by one forward pass with

.. math:: M = \sum_i \alpha_i\, P(c_i)\, c_i,\qquad
          \alpha = \mathrm{softmax}_i\big((W_1 x_m)^\top (W_2 c_i) / \tau\big),\ \tau = \sqrt{n},

where x_m is the image's mask predicted by the previous round's segmenter. M (1 x h x w) is fused into
the classifier as one extra channel. Code map: :func:`build_confounder_set` (C, P(c)),
:class:`BackdoorAdjustment` (alpha, M), :class:`ContaClassifier` (f(X, M) and the CAM).
"""

from .adjustment import BackdoorAdjustment, RawMaskFusion, ZeroFusion, attention_statistics, build_adjustment
from .classifier import ContaClassifier
from .confounders import ConfounderSet, build_confounder_set, prototype_quality, to_grid

__all__ = ["BackdoorAdjustment", "ConfounderSet", "ContaClassifier", "RawMaskFusion", "ZeroFusion",
           "attention_statistics", "build_adjustment", "build_confounder_set", "prototype_quality", "to_grid"]
