"""Install the rsna2024 kit: ``pip install -e ".[dev]"`` (install torch first, see README)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "rsna2024" / "__init__.py").read_text(), version)

setup(
    name="rsna2024",
    version=version["__version__"],
    description="Solution kit for the RSNA 2024 Lumbar Spine Degenerative Classification challenge",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rsna2024", "rsna2024.*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=0.9",
        "segmentation-models-pytorch>=0.3",
        "pydicom>=2.4",
        "pylibjpeg>=2.0",
        "pylibjpeg-openjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.0",
        "pylibjpeg-rle>=2.0",
        "numpy>=1.24",
        "pandas>=2.0",
        "albumentations>=1.3",
        "joblib>=1.3",
        "scikit-learn>=1.3",
        "scipy>=1.9",
        "matplotlib>=3.7",
        "pillow>=9.2",  # PIL: the phantom preview and the study report draw with it
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "packaging>=21",
    ],
    extras_require={
        # kaggle and six: the tests run the kaggle client's own metadata checks; nbclient + ipykernel execute notebooks;
        # hypothesis drives the fuzz suite (tests/test_fuzz_*.py)
        "dev": ["pytest>=7.4", "pyjpegls>=1.2", "ruff>=0.5", "kaggle>=1.6", "six", "nbclient>=0.7", "nbformat>=5",
                "ipykernel>=6", "hypothesis>=6.100"],
        "kaggle": ["kaggle>=1.6", "six"],
        "wandb": ["wandb"],
    },
    entry_points={"console_scripts": ["rsna2024=rsna2024.cli:main"]},
)
