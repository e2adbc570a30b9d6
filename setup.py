"""effnetv2_tf: EfficientNetV2 training on TensorFlow 2 and Keras 3.

TensorFlow itself is an extra so that a CPU-only machine never pulls the
570 MB GPU build: pick exactly one of
  pip install -e ".[cpu]"   # tensorflow-cpu (laptops, CI)
  pip install -e ".[gpu]"   # tensorflow[and-cuda] (NVIDIA GPUs)
  pip install -e ".[tpu]"   # tensorflow-tpu (Cloud TPU VMs)
"""

import setuptools

TF_VERSION = "2.21.0"

setuptools.setup(
    name="effnetv2_tf",
    version="0.1.0",
    description="EfficientNetV2 (Tan and Le, 2021) on TensorFlow 2 / Keras 3",
    packages=setuptools.find_packages(include=["effnetv2_tf", "effnetv2_tf.*",
                                               "configs"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "keras==3.15.1",
        "absl-py==2.5.1",
        "ml-collections==1.1.0",
        "tensorflow-datasets==4.9.10",
        # tensorflow-datasets imports it at run time on Python 3.11 without
        # declaring it.
        "importlib-resources==7.1.0",
        "numpy>=1.26,<2.5",
        "h5py==3.14.0",
        # tf.summary needs it; tensorflow-cpu 2.21 does not pull it in.
        "tensorboard==2.21.0",
        "PyYAML==6.0.3",
        "scikit-learn==1.9.1",
        "matplotlib==3.11.2",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        # The newest tensorflow-tpu on PyPI is 2.20.0 (no 2.21 build yet).
        "tpu": ["tensorflow-tpu==2.20.0"],
        "test": ["pytest==9.2.0"],
    },
)
