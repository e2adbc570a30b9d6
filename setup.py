"""effnetv2_tf: EfficientNetV2 training on TensorFlow 2 and Keras 3.

TensorFlow itself is an extra so that a CPU-only machine never pulls the
570 MB GPU build: pick exactly one of
  pip install -e ".[cpu]"   # tensorflow-cpu 2.21 (laptops, CI)
  pip install -e ".[gpu]"   # tensorflow[and-cuda] 2.21 (NVIDIA GPUs)
  pip install -e ".[tpu]"   # tensorflow-tpu 2.20 + libtpu (Cloud TPU VMs)
The pins that follow the TensorFlow line (tensorboard, libtpu) live in the
extras; `.ci/run` checks that each extra resolves.
"""

import setuptools

TF_VERSION = "2.21.0"
# tf.summary needs tensorboard; tensorflow-cpu 2.21 does not pull it in, and
# tensorflow-tpu 2.20 requires tensorboard~=2.20.0: one pin per line.
TENSORBOARD = {"2.21.0": "tensorboard==2.21.0", "2.20.0": "tensorboard==2.20.0"}
# The newest tensorflow-tpu on PyPI is 2.20.0 (no 2.21 build yet).
TPU_TF_VERSION = "2.20.0"
# tensorflow-tpu 2.20.0 asks for libtpu~=0.0.14, which today resolves to a
# libtpu (0.0.45 and later) without the TPU ops entry points TensorFlow
# calls: `import tensorflow` aborts ("ConfigureDistributedTpuOp_DoWork not
# available in this library"). 0.0.20 (built 2025-08-01) is the last libtpu
# released before the tensorflow-tpu 2.20.0 wheel (2025-08-07) and has them.
LIBTPU = "libtpu==0.0.20"

setuptools.setup(
    name="effnetv2_tf",
    version="0.1.0",
    description="EfficientNetV2 (Tan and Le, 2021) on TensorFlow 2 / Keras 3",
    packages=setuptools.find_packages(include=["effnetv2_tf", "effnetv2_tf.*",
                                               "configs"]),
    # The 1000 ImageNet class names (wnid<TAB>name) that infer.py prints.
    package_data={"effnetv2_tf.data": ["imagenet_labels.txt"]},
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
        "PyYAML==6.0.3",
        "scikit-learn==1.9.1",
        "matplotlib==3.11.2",
        # The architecture search's trials (effnetv2_tf.nas): a SQLite
        # study on one machine, a database server for several.
        "optuna==5.1.0",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}", TENSORBOARD[TF_VERSION]],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}",
                TENSORBOARD[TF_VERSION]],
        "tpu": [f"tensorflow-tpu=={TPU_TF_VERSION}", LIBTPU,
                TENSORBOARD[TPU_TF_VERSION]],
        "test": ["pytest==9.2.0"],
    },
)
