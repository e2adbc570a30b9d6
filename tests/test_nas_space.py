"""NAS search space and reward: sampling, candidates, analytic counts."""

import math

import numpy as np
import pytest

import effnetv2_tf
from configs import nas as nas_configs
from effnetv2_tf.nas import reward as reward_lib
from effnetv2_tf.nas import space as space_lib

# Reference effnetv2_configs.py / effnet_configs.py block strings.
V2_BASE = ("r1_k3_s1_e1_i32_o16_c1", "r2_k3_s2_e4_i16_o32_c1",
           "r2_k3_s2_e4_i32_o48_c1", "r3_k3_s2_e4_i48_o96_se0.25",
           "r5_k3_s1_e6_i96_o112_se0.25", "r8_k3_s2_e6_i112_o192_se0.25")
V1_B0 = ("r1_k3_s1_e1_i32_o16_se0.25", "r2_k3_s2_e6_i16_o24_se0.25",
         "r2_k5_s2_e6_i24_o40_se0.25", "r3_k3_s2_e6_i40_o80_se0.25",
         "r3_k5_s1_e6_i80_o112_se0.25", "r4_k5_s2_e6_i112_o192_se0.25",
         "r1_k3_s1_e6_i192_o320_se0.25")


def _round_filters(filters, width):
  """The reference's round_filters (divisor 8, at least 8)."""
  return max(8, int(filters * width + 4) // 8 * 8)


def _analytic_params(blocks, width=1.0, num_classes=1000, feature=1280):
  """Parameters of a network of `blocks` from per-block formulas: bias-free
  convolutions k*k*in*out (depthwise k*k*c), batch norm 4 per channel
  (scale, offset, moving mean and variance), SE 1x1 convolutions with
  biases, reduced to int(block input * ratio), the 1280-feature head."""
  def bn(c):
    return 4 * c
  total = 0
  first = None
  for text in blocks:
    fields = dict((t[:2], t[2:]) if t.startswith("se") else (t[0], t[1:])
                  for t in text.split("_"))
    repeats, k, e = int(fields["r"]), int(fields["k"]), int(fields["e"])
    cin = _round_filters(int(fields["i"]), width)
    cout = _round_filters(int(fields["o"]), width)
    first = first or cin
    fused = fields.get("c") == "1"
    se = float(fields.get("se", 0))
    for _ in range(repeats):
      mid = cin * e
      if fused and e == 1:
        p = k * k * cin * cout + bn(cout)
      elif fused:
        p = k * k * cin * mid + bn(mid) + mid * cout + bn(cout)
      else:
        p = (cin * mid + bn(mid) if e != 1 else 0) + k * k * mid + bn(mid)
        p += mid * cout + bn(cout)
      if se:
        r = max(1, int(cin * se))
        p += mid * r + r + r * mid + mid
      total += p
      cin = cout
  feature = _round_filters(feature, width)
  stem = 3 * 3 * 3 * first + bn(first)
  top = cin * feature + bn(feature) + feature * num_classes + num_classes
  return stem + total + top


def test_analytic_count_matches_the_reference_backbones():
  # Reference counts (tests/test_models.py REFERENCE_PARAMS, from the
  # reference's model summaries): V2-B0 7,200,312, V1-B0 5,330,564.
  assert _analytic_params(V2_BASE) == 7_200_312
  assert _analytic_params(V1_B0) == 5_330_564


@pytest.mark.parametrize("name, blocks", [("digits", V2_BASE),
                                          ("paper", V1_B0)])
def test_the_backbone_is_a_candidate_of_its_space(name, blocks):
  space = nas_configs.get_config(name).space
  assert space_lib.backbone_blocks(space) == blocks
  assert space_lib.blocks_of(space, space_lib.backbone_values(space)) == (
      blocks)


def test_paper_space_is_the_papers():
  # Paper section 3.3: {MBConv, Fused-MBConv}, kernel {3x3, 5x5},
  # expansion ratio {1, 4, 6}; reward weights w = -0.07, v = -0.05.
  config = nas_configs.get_config("paper")
  options = space_lib.choices(config.space)
  assert set(options["conv"]) == {"mbconv", "fused"}
  assert set(options["kernel"]) == {3, 5}
  assert set(options["expand"]) == {1, 4, 6}
  assert (config.reward.w, config.reward.v) == (-0.07, -0.05)


@pytest.mark.parametrize("name", ["digits", "paper"])
def test_sampling_covers_every_choice_with_valid_blocks(name):
  space = nas_configs.get_config(name).space
  rng = np.random.default_rng(0)
  seen = {}
  candidates = []
  for _ in range(200):
    values = space_lib.sample(
        space, lambda n, c: c[rng.integers(len(c))])
    for key, value in values.items():
      seen.setdefault(key, set()).add(value)
    candidates.append(space_lib.blocks_of(space, values))
  options = space_lib.choices(space)
  for key, values in seen.items():
    assert values == set(options[key.split("_", 1)[1]]), key
  for blocks in candidates:
    for text, base in zip(blocks, space_lib.backbone_blocks(space)):
      fused = text.endswith("_c1")
      assert ("_se" in text) != fused  # MBConv keeps SE, Fused has none
      # Channels and strides stay the backbone's.
      def fixed(block):
        return [t for t in block.split("_")
                if t[0] in "io" or (t[0] == "s" and t[1].isdigit())]
      assert fixed(text) == fixed(base)


def test_sampled_candidates_build_with_their_analytic_parameter_count():
  space = nas_configs.get_config("digits").space
  rng = np.random.default_rng(1)
  for _ in range(4):
    blocks = space_lib.blocks_of(space, space_lib.sample(
        space, lambda n, c: c[rng.integers(len(c))]))
    model = effnetv2_tf.create_model(
        space.backbone, num_classes=10, blocks=blocks,
        width_coefficient=0.25, depth_coefficient=1.0)
    assert model.count_params() == _analytic_params(
        blocks, width=0.25, num_classes=10), blocks


@pytest.mark.parametrize("key, value, message", [
    ("conv_types", ("mbconv", "sep"), "space.conv_types: unknown sep"),
    ("kernel_sizes", (), "space.kernel_sizes is empty"),
    ("num_layers", (0, 1), "space.num_layers: [0] must be integers at least"),
    ("kernel_sizes", (3, 4), "space.kernel_sizes: [4] must be integers odd"),
    ("backbone", "resnet-50", "space.backbone: Unknown model 'resnet-50'"),
])
def test_bad_space_is_one_clear_line(key, value, message):
  space = dict(nas_configs.get_config("digits").space)
  space[key] = value
  with pytest.raises(space_lib.SpaceError) as err:
    space_lib.choices(space)
  assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_reward_by_hand():
  # 0.8 * 2 ** -0.07 * 0.5 ** -0.05 = 0.8 * 0.952638 * 1.035265.
  value = reward_lib.reward(0.8, step_time=0.2, params=5e6,
                            base_step_time=0.1, base_params=1e7)
  assert value == pytest.approx(0.8 * 0.9526380 * 1.0352649, rel=1e-6)
  assert reward_lib.reward(0.7, 1.0, 3, 1.0, 3) == 0.7  # the backbone
  assert math.isclose(reward_lib.reward(0.7, 1.0, 3, 1.0, 3, w=-1, v=0),
                      0.7)
  with pytest.raises(ValueError, match="step_time must be a positive"):
    reward_lib.reward(0.7, 0.0, 3, 1.0, 3)
