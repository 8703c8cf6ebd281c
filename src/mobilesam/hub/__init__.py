"""Model families: size -> config, builder, key signature, pre-processing, feature layout, weights.

``build_sam`` recognises a checkpoint through :func:`detect_family` and ``mobilesam.weights``
resolves names through the weights index here, so a family registered with
:func:`register_family` (at import below, or at run time by a user) works everywhere.
Adding a family: its modules under ``mobilesam/modeling/<family>/``, a ``ModelFamily`` entry in
``hub/<family>.py``, and one ``register_family`` line below.
"""

from . import registry
from .family import ModelFamily, Preprocessing, WeightsEntry
from .registry import (
    Match,
    closest_architecture,
    detect_family,
    families,
    family_for_size,
    family_of,
    find_weights,
    get_family,
    known_sizes,
    known_weights,
    register_family,
    unregister_family,
    weights_aliases,
)
from .sam import SAM_FAMILY
from .sam2 import SAM2_FAMILY

register_family(SAM_FAMILY)
register_family(SAM2_FAMILY)

__all__ = ["SAM2_FAMILY", "SAM_FAMILY", "ModelFamily", "Preprocessing", "WeightsEntry", *registry.__all__]
