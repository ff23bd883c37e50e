"""Published CIFAR-N figures to compare against (Wei et al., ICLR 2022, and the methods' papers), with their protocol.

The BKD paper's own result tables were not available to this project, so none are listed here.
These are other methods' numbers as their papers report them, measured with a different protocol
(ResNet-34, the full 50,000 training images, 100+ epochs, best test accuracy over training), so they
are context for the ``paper`` profile, not something the ``features`` or ``cnn`` profile can be compared with.
"""

from __future__ import annotations

#: How the published test accuracies were measured.
PROTOCOL = ("CIFAR-N benchmark (Wei et al., ICLR 2022) and the methods' papers: ResNet-34, full training set, "
            "100 epochs or more, best test accuracy over training (optimistic); ProMix from IJCAI-23")

#: Published test accuracy (%) per method and split; C100N is CIFAR-100N ``noisy100``.
TEST_ACCURACY: dict[str, dict[str, float]] = {
    "CE (reported)": {"aggre": 87.77, "rand1": 85.02, "rand2": 86.46, "rand3": 85.16, "worst": 77.69,
                      "noisy100": 55.50},
    "Co-teaching": {"aggre": 91.20, "rand1": 90.33, "worst": 83.83, "noisy100": 60.37},
    "ELR+": {"aggre": 94.83, "rand1": 94.43, "rand2": 94.20, "rand3": 94.34, "worst": 91.09, "noisy100": 66.72},
    "DivideMix": {"aggre": 95.01, "rand1": 95.16, "rand2": 95.23, "rand3": 95.21, "worst": 92.56, "noisy100": 71.13},
    "SOP+": {"aggre": 95.61, "rand1": 95.28, "rand2": 95.31, "rand3": 95.39, "worst": 93.24, "noisy100": 67.81},
    "ProMix": {"aggre": 97.65, "rand1": 97.39, "rand2": 97.55, "rand3": 97.52, "worst": 96.34, "noisy100": 73.79},
}

#: Published noise-detection F1 (%) of ProMix (challenge version), full training set.
DETECTION_F1: dict[str, dict[str, float]] = {
    "ProMix": {"aggre": 89.86, "rand1": 93.88, "worst": 96.06, "noisy100": 79.87},
}
