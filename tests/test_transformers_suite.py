"""transformers' own `ModelTesterMixin` and `ConfigTester` run over HiMTM's three model classes.

The upstream test files come from the installed transformers version's sdist (`tests/upstream_suite.py`). Every mixin
test either passes having built a HiMTM model (counted per test: a pass without one fails), or is skipped with its
reason, here or in upstream's own `skipTest` / `require_*` decorators. Where HiMTM's design differs from one of the
mixin's assumptions, the test below overrides that one expectation and says why. `tests/conftest.py` prints the
pass / skip / fail counts.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tempfile
import unittest
from unittest import mock

import pytest
import torch
from transformers import set_seed
from transformers.models.auto import modeling_auto
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging
from upstream_suite import load

from himtm_hf import HiMTMConfig, HiMTMForPrediction, HiMTMForPretraining, HiMTMModel
from himtm_hf.modeling_himtm import HiMTMPreTrainedModel

modeling_common, configuration_common = load()
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor = modeling_common.floats_tensor

# The mixin tells base models, pre-training and task heads apart through transformers' name mappings (a base model
# has no loss, so `test_training` leaves it out). Added for the tests of this module only (`_name_mappings`).
NAME_MAPPINGS = {
    "MODEL_MAPPING_NAMES": "HiMTMModel",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES": "HiMTMForPretraining",
    "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES": "HiMTMForPrediction",
}

# What each test did to HiMTM models: {test id: {"built": n, "forwards": n}}; read by tests/conftest.py.
MODEL_USE: dict[str, dict[str, int]] = {}

# Mixin tests that check a class or config attribute without building a model (so they pass without one).
CLASS_LEVEL = {
    "test_model_main_input_name": "reads each class's `forward` signature",
    "test_generation_tester_mixin_inheritance": "reads each class's `can_generate()`",
    "test_config_attn_implementation_setter": "sets `attn_implementation` on the config",
    "test_num_layers_is_small": "checks the tester's own depth (at most 2 blocks)",
}

# Upstream tests of other modalities' feature getters (`get_text_features`, ...) loop over nothing for HiMTM.
MODALITY_TEST = re.compile(r"^test_(get_(text|image|audio|video)_features\w*|multimodal_outputs_are_returned)$")
MODALITY_REASON = "HiMTM has no text, image, audio or video modality (no `get_*_features`, no vision config)."

# Mixin tests that cannot apply to HiMTM, with the reason. Everything else runs.
SKIPS = {
    "test_resize_tokens_embeddings": "HiMTM embeds real-valued patches with a Linear layer: there is no vocabulary.",
    "test_resize_embeddings_untied": "HiMTM has no token embeddings to resize or tie.",
    "test_resize_embeddings_untied_no_reinit_on_post_init": "HiMTM has no token embeddings to resize or tie.",
    "test_resize_position_vector_embeddings": "Positions are fixed by context_length / patch_length in the config.",
    "test_model_get_set_embeddings": "HiMTM has no input token embeddings (`get_input_embeddings`) to get or set.",
    "test_inputs_embeds": "HiMTM takes real-valued `past_values`; there are no ids to replace by `inputs_embeds`.",
    "test_inputs_embeds_matches_input_ids": "HiMTM has no `input_ids`.",
    "test_enable_input_require_grads": "Needs input token embeddings (PEFT hook on `get_input_embeddings`).",
    "test_enable_input_require_grads_with_gradient_checkpointing": "Needs input token embeddings (PEFT hook).",
    "test_peft_gradient_checkpointing_enable_disable": "Needs input token embeddings (PEFT hook).",
    "test_feed_forward_chunking": "HiMTM's feed-forward layers do not implement `chunk_size_feed_forward`.",
    "test_problem_types": "No classification or regression head (`problem_type` selects their loss).",
    "test_model_parallelism": "Needs several accelerators (`device_map` split).",
    "test_torch_compile_for_training": "Needs an accelerator (upstream's `require_torch_accelerator` on CPU CI).",
    "test_can_load_ignoring_mismatched_shapes": "Classification heads only (`num_labels`); the HiMTM version of this "
    "check is test_load_with_mismatched_shapes below (a forecast head of another prediction_length).",
}


def _count_model_use(test_id: str, require_model: bool = True):
    """Wraps a test: counts HiMTM models built and run; a test that returns without building one fails (unless it is
    one of the `CLASS_LEVEL` checks)."""

    def decorator(test):
        @functools.wraps(test)
        def wrapper(self, *args, **kwargs):
            use = MODEL_USE.setdefault(test_id, {"built": 0, "forwards": 0})

            def on_forward(module, args, output):
                if isinstance(module, HiMTMPreTrainedModel):
                    use["forwards"] += 1

            original_init = HiMTMPreTrainedModel.__init__

            def counting_init(model, *a, **k):
                original_init(model, *a, **k)
                if type(model).__init__ is not HiMTMPreTrainedModel.__init__:
                    use["built"] += 1

            hook = torch.nn.modules.module.register_module_forward_hook(on_forward)
            HiMTMPreTrainedModel.__init__ = counting_init
            try:
                result = test(self, *args, **kwargs)
            finally:
                HiMTMPreTrainedModel.__init__ = original_init
                hook.remove()
            if use["built"] == 0 and require_model:
                raise AssertionError(f"{test_id} returned without building a HiMTM model: it tested nothing.")
            return result

        return wrapper

    return decorator


class HiMTMModelTester:
    """A tiny HiMTM: 2 hierarchies of different widths and depths over 8 patches of 2 channels."""

    def __init__(self, parent, batch_size: int = 3, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.context_length, self.prediction_length, self.num_input_channels = 32, 6, 2
        self.patch_length = 4
        self.num_patches = 8
        self.hidden_size = 16  # width of the finest hierarchy: hidden_states[0] is the patch embedding
        self.num_layers = [1, 1]  # upstream caps testers at 2 blocks (test_num_layers_is_small)
        self.num_hidden_layers = sum(self.num_layers)  # transformer blocks; hidden_states has one more
        self.num_attention_heads = 2  # of the finest hierarchy: attentions[0] is its first block
        self.seq_length = self.encoder_seq_length = self.num_patches

    def tokens_seen_by(self, model_class: type) -> int:
        """Tokens the encoder of `model_class` runs on: with DED the pre-training student sees the visible patches
        only (HiMTM's MAE design), every other class the whole window."""
        if model_class is HiMTMForPretraining:
            return self.num_patches - self.get_config().num_masked_patches
        return self.num_patches

    def get_config(self) -> HiMTMConfig:
        return HiMTMConfig(
            context_length=self.context_length, prediction_length=self.prediction_length,
            num_input_channels=self.num_input_channels, patch_length=self.patch_length,
            patch_stride=self.patch_length, num_hierarchies=2, d_model=[self.hidden_size, 24],
            num_layers=self.num_layers, num_attention_heads=[self.num_attention_heads, 2], ffn_dim=32,
            decoder_num_attention_heads=2, csa_num_attention_heads=2,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[HiMTMConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        inputs = {
            "past_values": floats_tensor([self.batch_size, self.context_length, self.num_input_channels]),
            "future_values": floats_tensor([self.batch_size, self.prediction_length, self.num_input_channels]),
        }
        return config, inputs


class HiMTMModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (HiMTMModel, HiMTMForPretraining, HiMTMForPrediction)
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates models by a copyright line; HiMTM is new
    has_attentions = True

    @classmethod
    def setUpClass(cls) -> None:
        cls._added_names = []
        for mapping, class_name in NAME_MAPPINGS.items():
            names = getattr(modeling_auto, mapping)
            if "himtm" not in names:
                names["himtm"] = class_name
                cls._added_names.append(names)

    @classmethod
    def tearDownClass(cls) -> None:
        for names in cls._added_names:
            del names["himtm"]

    def setUp(self) -> None:
        self.model_tester = HiMTMModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if model_class is HiMTMForPretraining:
            # Pre-training draws a random mask per call; fixed noise makes two calls comparable, as the mixin does
            # for Hiera's masked pre-training (`noise`).
            config = self.model_tester.get_config()
            generator = torch.Generator().manual_seed(42)
            inputs["mask_noise"] = torch.rand(inputs["past_values"].shape[0], config.num_input_channels,
                                              config.num_masking_units, generator=generator)
        return inputs

    def _per_class(self, upstream_test) -> None:
        """Runs an upstream test once per class with that class's encoder length (`tokens_seen_by`)."""
        classes, tester = self.all_model_classes, self.model_tester
        try:
            for model_class in classes:
                self.all_model_classes = (model_class,)
                tester.seq_length = tester.encoder_seq_length = tester.tokens_seen_by(model_class)
                upstream_test()
        finally:
            self.all_model_classes = classes
            tester.seq_length = tester.encoder_seq_length = tester.num_patches

    def test_hidden_states_output(self):
        # Upstream expects every class's hidden states over the same length; HiMTMForPretraining's student encodes the
        # visible patches only, so each class is checked with its own length.
        self._per_class(super().test_hidden_states_output)

    def test_attention_outputs(self):
        # As test_hidden_states_output: the pre-training student attends over the visible patches only.
        self._per_class(super().test_attention_outputs)

    def test_batching_equivalence(self):
        # `hierarchy_reconstruction_losses` / `hierarchy_distillation_losses` are batch means per hierarchy, shape
        # (num_hierarchies,): like the scalar `loss`, which upstream leaves out, they are not per-row outputs.
        forward = HiMTMForPretraining.forward

        def without_loss_vectors(model, *args, **kwargs):
            output = forward(model, *args, **kwargs)
            return dataclasses.replace(output, hierarchy_reconstruction_losses=None,
                                       hierarchy_distillation_losses=None)

        with mock.patch.object(HiMTMForPretraining, "forward", without_loss_vectors):
            super().test_batching_equivalence()

    def test_model_base_model_prefix(self):
        # Upstream checks `base_model is not model` for generative classes, of which HiMTM has none; the same holds
        # for its two heads, whose base model is the encoder at `model.model`.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in (HiMTMForPretraining, HiMTMForPrediction):
            model = model_class(config)
            self.assertIs(model.base_model, model.model)
            self.assertIsInstance(model.base_model, HiMTMModel)

    def test_load_with_mismatched_shapes(self):
        # Upstream checks a classification head whose label count changed. HiMTM's config-sized head is the forecast
        # projection: a checkpoint of another prediction_length must fail to load without ignore_mismatched_sizes,
        # and load with it, keeping the encoder and re-initialising the head.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = HiMTMForPrediction(config)
        horizon = config.prediction_length + 5
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            with self.assertRaises(RuntimeError):
                HiMTMForPrediction.from_pretrained(folder, prediction_length=horizon)
            with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
                reloaded = HiMTMForPrediction.from_pretrained(folder, prediction_length=horizon,
                                                              ignore_mismatched_sizes=True)
        self.assertIn("MISMATCH", captured.out)
        forecast = reloaded.eval()(past_values=inputs["past_values"]).prediction_outputs
        self.assertEqual(tuple(forecast.shape), (self.model_tester.batch_size, horizon, config.num_input_channels))
        for name, tensor in model.model.state_dict().items():
            torch.testing.assert_close(reloaded.model.state_dict()[name], tensor, msg=f"encoder {name} changed")

    def test_torch_export_matches_eager(self):
        # HiMTM's stand-in for upstream's ExportTesterMixin (absent from the sdist): `torch.export` of every class on
        # the tester's inputs runs and gives eager's outputs.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            exported = torch.export.export(model, args=(), kwargs=inputs, strict=False)
            with torch.no_grad():
                expected, got = model(**inputs), exported.module()(**inputs)
            for key, value in expected.items():
                if torch.is_tensor(value):
                    torch.testing.assert_close(got[key], value, msg=f"{model_class.__name__}.{key}")



class HiMTMConfigTest(unittest.TestCase):
    """transformers' `ConfigTester` (configs only: no model is built here)."""

    def test_config(self):
        ConfigTester(self, config_class=HiMTMConfig, has_text_modality=False, context_length=64, patch_length=8,
                     patch_stride=8, prediction_length=6).run_common_tests()


def _skipper(reason: str):
    def test(self):
        self.skipTest(reason)

    return test


for _name in dir(HiMTMModelTest):
    if not _name.startswith("test_") or not callable(getattr(HiMTMModelTest, _name)):
        continue
    if _name in SKIPS or MODALITY_TEST.match(_name):
        setattr(HiMTMModelTest, _name, _skipper(SKIPS.get(_name, MODALITY_REASON)))
    else:
        counted = _count_model_use(f"HiMTMModelTest::{_name}", require_model=_name not in CLASS_LEVEL)
        setattr(HiMTMModelTest, _name, counted(getattr(HiMTMModelTest, _name)))


@pytest.fixture(autouse=True)
def _seeded():
    set_seed(0)
    yield
    torch.manual_seed(0)

