"""Former home of the image-free prior, which now lives in :mod:`rsna2024.baselines.prior`.

Kept only so that stages written against the old path (``from rsna2024.data.prior import fit_prior``) still
import; names resolve lazily (PEP 562), so importing this module never starts the baselines package early.
Remove once no module imports it.
"""


def __getattr__(name: str):
    from rsna2024.baselines import prior

    return getattr(prior, name)
