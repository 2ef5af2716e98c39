"""care_tf: CARE self-supervised pretraining (NeurIPS 2021) in Keras 3 / TensorFlow."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
version = {}
exec((HERE / "care_tf" / "version.py").read_text(), version)

TF_VERSION = "2.21.0"
TRANSFER = ["keras-hub==0.32.0", "tensorflow-text==2.21.1", "pycocotools==2.0.11"]

CONFIG_PACKAGES = ["care_tf.configs"] + [
    "care_tf.configs." + p.name for p in sorted((HERE / "configs").iterdir()) if p.is_dir()
]

setup(
    name="care_tf",
    version=version["__version__"],
    description=(
        "CARE self-supervised learning (CNN attention revitalised by transformers) in Keras 3"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # The experiment configs live once, in configs/ at the top of the repository; the
    # wheel carries them as care_tf/configs/ (found by care_tf/train/config_names.py).
    packages=[*find_packages(include=["care_tf", "care_tf.*"]), *CONFIG_PACKAGES],
    package_dir={"care_tf.configs": "configs"},
    package_data={name: ["*.yaml"] for name in CONFIG_PACKAGES},
    install_requires=[
        "keras==3.15.1",
        "numpy>=1.26,<3",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "pillow>=10.0",
        "matplotlib>=3.8",
        "tensorboard==2.21.0",
    ],
    extras_require={
        # Exactly one TensorFlow flavour: `pip install care_tf[cpu]` (CI, laptops),
        # `care_tf[gpu]` (CUDA wheels), `care_tf[tpu]` (Cloud TPU VMs).
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        # tensorflow-tpu trails the main release on PyPI (2.20 when 2.21 shipped).
        "tpu": ["tensorflow-tpu>=2.20,<2.22"],
        "data": ["tensorflow-datasets==4.9.10"],
        # Transfer (fine-tuning, detection, segmentation) builds keras-hub task models and
        # scores boxes with pycocotools. keras-hub's tensorflow-text pulls the `tensorflow`
        # wheel of the same release beside tensorflow-cpu (same files, same version).
        "transfer": TRANSFER,
        "test": [
            "pytest>=8",
            # tests/test_package.py builds the wheel without build isolation.
            "setuptools>=61",
            "wheel>=0.37",
            "ruff>=0.6",
            "tensorflow-datasets==4.9.10",
            *TRANSFER,
            "scikit-learn>=1.4",
            "scikit-image>=0.22",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
        ],
    },
    entry_points={
        "console_scripts": [
            "care-train=care_tf.train.__main__:main",
            "care-evaluate=care_tf.evaluate.__main__:main",
            "care-export=care_tf.export.__main__:main",
            "care-convert=care_tf.convert.__main__:main",
            "care-quickstart=care_tf.quickstart:main",
            "care-make-tfrecords=care_tf.data.make_tfrecords:main",
            "care-make-scenes=care_tf.transfer.make_scenes:main",
        ]
    },
)
