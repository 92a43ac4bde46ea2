"""The Kaggle side of the kit: an offline package of trained runs and wheels, the inference kernel, push and submit.

- :mod:`rsna2024.kaggle.metadata`: slugs, ``dataset-metadata.json`` and ``kernel-metadata.json``.
- :mod:`rsna2024.kaggle.wheels`: the kit's own wheel and the wheels of its dependencies.
- :mod:`rsna2024.kaggle.notebook`: the inference notebook, generated from ``kernels/inference.ipynb``.
- :mod:`rsna2024.kaggle.package`: ``rsna2024 kaggle package`` (the dataset and kernel folders).
- :mod:`rsna2024.kaggle.api`: ``rsna2024 kaggle push / submit / status`` over the kaggle client (imported lazily).
"""
COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"
#: Dependencies not packaged by default (fnmatch patterns): Kaggle's image has a CUDA build of torch and torchvision,
#: and ``pip install`` keeps an installed package that satisfies the requirement. ``--exclude`` replaces the list.
DEFAULT_EXCLUDE = ("torch", "torchvision", "nvidia-*", "triton")
#: The machine a pushed kernel runs on (``kaggle kernels push --accelerator``).
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"
