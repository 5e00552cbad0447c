"""scaffold: a short spec of a neural network in, a standalone PyTorch project out.

The flow is one way: spec (:mod:`scaffold.spec`) -> builders and layers
(:mod:`scaffold.layers`, :mod:`scaffold.blocks`, :mod:`scaffold.builders`) -> plan (:mod:`scaffold.plan`)
-> render (:mod:`scaffold.render`, a Copier template) -> cli (:mod:`scaffold.cli`).
"""

__version__ = "0.3.0"
