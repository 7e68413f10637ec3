"""Reference fixtures for the native EfficientNet-B0, ConvNeXt-Tiny and ShuffleNetV2 x1.0
(formula weights, see `zoo_fixtures.py`):

    nice -n 19 /tmp/torch/bin/python scripts/zoo_fixtures_effnet_convnext_shufflenet.py [NAME…]

writes testdata/zoo/{efficientnet_b0,convnext_tiny,shufflenet_v2_x1_0}{.json,.modules.json,
.ref.safetensors}. ConvNeXt's `layer_scale` ([C, 1, 1]) takes the formula's weight kind with
fan-in 1, as `formula` gives every tensor that is neither a bias nor one-dimensional.
"""
import sys

import torchvision

from zoo_fixtures import formula_case

CASES = {
    # model: (constructor, input size, modules, gradient cases, formula keys to store)
    # (`layer_scale` is a parameter, not a module: `stochastic_depth`, the identity in eval,
    # is what a hook sees of the scaled branch.)
    "efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(weights=None),
        64,
        ["features.0", "features.2.0.block.2.scale_activation", "features.2.0.block.2",
         "features.2.1", "features.6", "classifier.1"],
        [("features.3.1", 5), ("features.8", 100)],
        ["features.1.0.block.1.fc1.weight", "features.0.1.running_var"],
    ),
    "convnext_tiny": (
        lambda: torchvision.models.convnext_tiny(weights=None),
        64,
        ["features.0.1", "features.1.0.block.4", "features.1.1.stochastic_depth", "features.1.1",
         "features.4", "classifier.2"],
        [("features.1.2", 7), ("features.5", 30)],
        ["features.1.0.layer_scale", "features.0.1.weight"],
    ),
    "shufflenet_v2_x1_0": (
        lambda: torchvision.models.shufflenet_v2_x1_0(weights=None),
        64,
        ["conv1", "stage2.0.branch1", "stage2.1", "stage3.0", "conv5", "fc"],
        [("stage2.1", 3), ("stage4", 50)],
        ["stage2.0.branch2.3.weight", "fc.bias"],
    ),
}


def main():
    only = set(sys.argv[1:])
    for name, case in CASES.items():
        if not only or name in only:
            formula_case(name, *case)


if __name__ == "__main__":
    main()
