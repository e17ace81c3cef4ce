"""The anatomical structures a model can segment, one output channel each.

    lungs      both lungs in ONE channel (as Montgomery and most sets label them); right and left are split
               by position afterwards (postprocess/masks.split_lungs), as for lungs-only models
    heart      the heart silhouette
    clavicles  both clavicles in one channel (they overlap the lungs: every channel has its own sigmoid)

A data set labels some of them. In a `structures/` folder layout (as in JSRT/SCR) a structure's mask is the
union of its `parts` folders (structures/left_lung + structures/right_lung = lungs), or a folder named
after the structure itself (structures/lungs). In a manifest it is a column named after the structure.

Order matters: a model's channels follow the order of its checkpoint's `structures` list. A checkpoint
without that list (lungs-only models from before) has exactly ("lungs",).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Structure:
    name: str
    parts: tuple[str, ...]  # the folders of a structures/ layout whose union is this structure's mask
    keep_largest: int  # post-processing: connected components kept (two lungs, one heart, two clavicles)
    label: str  # human-readable, e.g. in figures and DICOM SEG segment labels
    snomed: tuple[str, str]  # (SNOMED CT code, meaning): the DICOM SEG segmented property type


STRUCTURES: dict[str, Structure] = {
    s.name: s
    for s in (
        Structure("lungs", ("right_lung", "left_lung"), 2, "Lungs", ("39607008", "Lung")),
        Structure("heart", ("heart",), 1, "Heart", ("80891009", "Heart")),
        Structure("clavicles", ("right_clavicle", "left_clavicle"), 2, "Clavicles", ("51299004", "Clavicle")),
    )
}
LUNGS = "lungs"
DEFAULT_STRUCTURES = (LUNGS,)  # what a checkpoint without a structures list segments


def check_structures(names, what: str = "structures") -> tuple[str, ...]:
    """Validate a list of structure names: known, no repeats, non-empty. Returns it as a tuple.

    Raises ValueError naming the problem and the known names."""
    names = tuple(names)
    unknown = [n for n in names if n not in STRUCTURES]
    if unknown:
        raise ValueError(f"{what}: unknown structure {unknown[0]!r}; known: {', '.join(STRUCTURES)}")
    if not names:
        raise ValueError(f"{what}: must name at least one structure ({', '.join(STRUCTURES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: a structure is listed twice: {list(names)}")
    return names


def further_structures(names) -> tuple[str, ...]:
    """The further structures (not the lungs) among `names`, in STRUCTURES order (the channel order).

    Raises ValueError for the lungs (callers pass them apart, as the lung mask) or an unknown name."""
    names = list(names)
    for name in names:
        if name not in STRUCTURES or name == LUNGS:
            known = ", ".join(n for n in STRUCTURES if n != LUNGS)
            raise ValueError(f"{name!r} is not a further structure (known: {known}); the lungs are passed "
                             "as the lung mask")
    return tuple(n for n in STRUCTURES if n in names)
