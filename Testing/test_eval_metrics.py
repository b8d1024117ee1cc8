"""FID (Fréchet distance, MedicalNet feature network, statistics cache) and MS-SSIM diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from land.eval.features import (
    WEIGHTS_FILE,
    extract_features,
    extractor_id,
    find_weights,
    load_medicalnet_resnet50,
    medicalnet_resnet50,
)
from land.eval.fid import FeatureStats, fid_from_stats, frechet_distance
from land.eval.msssim import min_size, ms_ssim_diversity, ms_ssim_pair, select_pairs
from land.eval.sets import (
    INTENSITY_PROTOCOLS,
    UnitVolumes,
    describe_intensity_protocol,
    list_volumes,
    volume_to_unit,
    wdm_unit,
)
from land.imaging.io import write_volume
from land.imaging.volume import Volume
from land.interface.errors import InputError


def fid_eigen(mu1, s1, mu2, s2) -> float:
    """Independent formula (torchmetrics style): Tr sqrt(S1 S2) = sum of sqrt of the eigenvalues of S1 S2."""
    eig = np.linalg.eigvals(s1 @ s2)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig.astype(complex)).real.sum()
    )


@pytest.mark.parametrize("dim,n", [(8, 200), (32, 100)])
def test_frechet_distance_matches_independent_formula(dim, n):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(n, dim))
    b = rng.normal(size=(n, dim)) @ rng.normal(scale=0.5, size=(dim, dim)) + 0.3
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    got = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    want = fid_eigen(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert got == pytest.approx(want, rel=1e-6)
    assert got > 1.0


def test_fid_self_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(64, 16))
    s = FeatureStats.from_features(f)
    assert abs(fid_from_stats(s, s)["fid"]) < 1e-8
    values = [fid_from_stats(s, FeatureStats.from_features(f + d))["fid"] for d in (0.1, 0.5, 1.0)]
    assert values == pytest.approx([16 * d**2 for d in (0.1, 0.5, 1.0)], rel=1e-6)  # mean shift only
    out = fid_from_stats(s, FeatureStats.from_features(f + 1.0))
    assert out["fid_x1e3"] == pytest.approx(out["fid"] * 1e3)


def test_frechet_distance_singular_covariances_fall_back_to_eps():
    rng = np.random.default_rng(1)
    a, b = (
        FeatureStats.from_features(rng.normal(size=(3, 20))),
        FeatureStats.from_features(rng.normal(size=(3, 20))),
    )
    d = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(d) and d > 0


def test_feature_stats_cache_roundtrip_and_key(tmp_path):
    s = FeatureStats.from_features(np.random.default_rng(0).normal(size=(5, 4)))
    s.save(tmp_path / "s.npz", key="abc")
    back = FeatureStats.load(tmp_path / "s.npz", key="abc")
    assert back is not None and back.n == 5 and np.array_equal(back.sigma, s.sigma)
    assert FeatureStats.load(tmp_path / "s.npz", key="other") is None
    assert FeatureStats.load(tmp_path / "missing.npz") is None


class _MedicalNetBottleneck(nn.Module):
    """MedicalNet's bottleneck as published (dilation in the 3x3x3 conv, padding = dilation)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes, planes, 3, stride=stride, dilation=dilation, padding=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _MedicalNetResNet50(nn.Module):
    """MedicalNet's ResNet-50 backbone (shortcut B), written from its published layout, with its seg head."""

    def __init__(self):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, stride=2)
        self.layer3 = self._layer(256, 6, dilation=2)
        self.layer4 = self._layer(512, 3, dilation=4)
        self.conv_seg = nn.Conv3d(2048, 2, 1)

    def _layer(self, planes, blocks, stride=1, dilation=1):
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv3d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                 nn.BatchNorm3d(planes * 4))  # fmt: skip
        layers = [_MedicalNetBottleneck(self.inplanes, planes, stride, dilation, down)]
        self.inplanes = planes * 4
        layers += [_MedicalNetBottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def medicalnet_file(tmp_path_factory):
    """A MedicalNet-format file from a random network: {"state_dict": {"module.…": …}} incl. the seg head."""
    torch.manual_seed(0)
    ref = _MedicalNetResNet50().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong mapping would show
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_FILE
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    return path, ref


def test_medicalnet_weights_load_with_no_missing_or_unexpected_keys(medicalnet_file):
    path, ref = medicalnet_file
    net = load_medicalnet_resnet50(path)
    expected = {f"module.{k}" for k in net.state_dict()}
    saved = set(torch.load(path, weights_only=True)["state_dict"])
    assert expected == saved - {"module.conv_seg.weight", "module.conv_seg.bias"}
    assert extractor_id(net).startswith("medicalnet-r50-")
    x = torch.rand(1, 1, 32, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.features(x)
        got = net(x)
    assert got.shape == (1, 2048)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # MedicalNet's layout, not MONAI's strides


def test_medicalnet_layout_keeps_layer4_at_one_eighth():
    net = medicalnet_resnet50()
    seen = {}
    net.layer4.register_forward_hook(lambda _m, _i, out: seen.update(shape=out.shape))
    with torch.no_grad():
        net(torch.zeros(1, 1, 32, 32, 32))
    assert seen["shape"] == (1, 2048, 4, 4, 4)
    assert net.layer4[0].conv2.dilation == (4, 4, 4) and net.layer3[2].conv2.padding == (2, 2, 2)


def test_weights_errors_name_the_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LAND_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError, match=WEIGHTS_FILE) as e:
        find_weights()
    assert str(tmp_path / "cache" / "weights" / WEIGHTS_FILE) in str(e.value)
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    torch.save(
        {"state_dict": {"module.conv1.weight": torch.zeros(3)}}, tmp_path / "cache" / "weights" / WEIGHTS_FILE
    )
    assert find_weights() == tmp_path / "cache" / "weights" / WEIGHTS_FILE
    with pytest.raises(InputError, match="missing"):
        load_medicalnet_resnet50()


def test_pluggable_extractor_any_module():
    net = nn.Sequential(nn.Conv3d(1, 3, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    vols = [np.full((8, 8, 8), v, np.float32) for v in (0.0, 0.5)]
    feats = list(extract_features(net, vols))
    assert [f.shape for f in feats] == [(3,), (3,)] and not np.allclose(feats[0], feats[1])
    assert extractor_id(net) != extractor_id(
        nn.Sequential(nn.Conv3d(1, 3, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    )


def test_ms_ssim_identical_is_one_and_noise_is_low():
    rng = np.random.default_rng(0)
    side = min_size(7)
    assert side == 112
    zz = np.linspace(0, 1, side, dtype=np.float32)
    smooth = (zz[:, None, None] * 0.5 + zz[None, :, None] * 0.3 + 0.1).repeat(side, axis=2)
    assert ms_ssim_pair(smooth, smooth) == pytest.approx(1.0, abs=1e-5)
    a, b = (rng.random((side,) * 3, dtype=np.float32) for _ in range(2))
    assert ms_ssim_pair(a, b) < 0.3


def test_ms_ssim_in_slabs_equals_monai_on_the_whole_volume():
    """Slab-wise SSIM maps (bounded memory) give MONAI's whole-volume MS-SSIM, whatever the slab size."""
    import torch
    from monai.metrics import MultiScaleSSIMMetric
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    a = ndi.gaussian_filter(rng.random((120, 112, 116), dtype=np.float32), 2.0)
    b = np.clip(a + 0.05 * ndi.gaussian_filter(rng.standard_normal(a.shape).astype(np.float32), 1.0), 0, 1)
    a = (a - a.min()) / (a.max() - a.min())
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=7)
    whole = float(metric(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).reshape(-1)[0])
    assert 0.3 < whole < 0.99  # a pair that is neither identical nor unrelated
    for slab_voxels in (1, 20 * 112 * 116, 10**9):  # one output plane per slab, several planes, one piece
        assert ms_ssim_pair(a, b, slab_voxels=slab_voxels) == pytest.approx(whole, abs=2e-6)


def test_ms_ssim_diversity_pairs_and_small_volumes():
    rng = np.random.default_rng(1)
    base = rng.random((48, 48, 48), dtype=np.float32)
    same = ms_ssim_diversity([base, base.copy(), base.copy()], kernel_size=3)
    assert same["mean"] == pytest.approx(1.0, abs=1e-5) and same["pairs"] == 3 and same["std"] < 1e-5
    noisy = [rng.random((48,) * 3, dtype=np.float32) for _ in range(4)]
    noise = ms_ssim_diversity(noisy, max_pairs=2, seed=3, kernel_size=3)
    assert noise["pairs"] == 2 and noise["mean"] < 0.5 and noise["seed"] == 3
    with pytest.raises(InputError, match="at least 112"):
        ms_ssim_diversity([base, base])  # kernel 7 needs 112^3
    with pytest.raises(InputError, match="at least 2"):
        ms_ssim_diversity([base], kernel_size=3)


def test_select_pairs_all_or_seeded_subset():
    assert select_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sub = select_pairs(10, 7, seed=5)
    assert len(set(sub)) == 7 and all(0 <= i < j < 10 for i, j in sub)
    assert sub == select_pairs(10, 7, seed=5) and sub != select_pairs(10, 7, seed=6)


@pytest.mark.parametrize(
    "hu,want",
    [
        # p99.9 of 5 values: 0 + 0.996 * 500 = 498 -> clip to [-1000, 498], min-max over [-1000, 498]
        ([-1500, -1000, -500, 0, 500], [0, 0, 500 / 1498, 1000 / 1498, 1]),
        # no air: the min-max uses the volume's own min (-500), not -1000; p99.9 = 250 + 0.997 * 250
        ([-500, 0, 250, 500], [0, 500 / 999.25, 750 / 999.25, 1]),
    ],
)
def test_wdm_scaling_is_clip_to_own_p999_then_min_max(hu, want):
    vol = np.asarray(hu, np.int16).reshape(1, 1, -1)
    got = wdm_unit(vol)
    assert got.dtype == np.float32 and got.shape == vol.shape
    np.testing.assert_allclose(got.ravel(), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(volume_to_unit(vol, "wdm"), got)
    fixed = volume_to_unit(vol, "fixed-window")  # HU [-1000, 1000] -> [0, 1]: a different mapping
    np.testing.assert_allclose(fixed.ravel(), np.clip((np.asarray(hu) + 1000) / 2000, 0, 1), atol=1e-6)
    assert np.abs(fixed - got).max() > 0.2


def test_wdm_scaling_of_a_ct_like_volume_matches_numpy_reference():
    rng = np.random.default_rng(7)
    hu = rng.normal(-300, 500, size=(20, 20, 20)).clip(-1024, 3071)
    hu[0, 0, :3] = 3000  # a few bright outliers (metal) that the per-volume 99.9th percentile cuts off
    a = np.maximum(hu, -1000.0)  # WDM-3D: values below -1000 set to -1000, then clip at the 0.999 quantile
    a = np.clip(a, -1000.0, np.quantile(a, 0.999))
    want = (a - a.min()) / (a.max() - a.min())
    got = wdm_unit(hu)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0) and (got >= 1.0 - 1e-6).sum() >= 3
    assert np.abs(volume_to_unit(hu, "fixed-window") - got).max() > 0.1


@pytest.mark.parametrize("value", [40.0, -3000.0, 2500.0])
def test_wdm_scaling_of_a_constant_volume_is_all_zeros(value):
    with np.errstate(all="raise"):  # no 0/0
        got = wdm_unit(np.full((4, 5, 6), value, np.float32))
    assert got.dtype == np.float32 and got.shape == (4, 5, 6) and not got.any()


def test_unit_volumes_apply_the_protocol_and_name_it(tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.normal(-200, 600, size=(8, 8, 8)).astype(np.float32)
    write_volume(tmp_path / "a.nii.gz", Volume(hu, (1.0, 1.0, 1.0)))
    vset = list_volumes(tmp_path)
    assert INTENSITY_PROTOCOLS[0] == "wdm"
    np.testing.assert_allclose(UnitVolumes(vset)[0], wdm_unit(hu), atol=1e-6)  # default: wdm
    np.testing.assert_allclose(
        UnitVolumes(vset, protocol="fixed-window")[0], volume_to_unit(hu, "fixed-window"), atol=1e-6
    )
    with pytest.raises(ValueError, match="wdm, fixed-window"):
        UnitVolumes(vset, protocol="zscore")
    assert describe_intensity_protocol("wdm") == (
        "wdm (HU clipped to [-1000, per-volume 99.9th percentile], min-max to [0,1] per volume)"
    )
    assert describe_intensity_protocol("fixed-window").startswith("fixed-window (HU clipped to [-1000, 1000]")


def test_ms_ssim_text_counts_pairs_and_says_one_pair_is_no_diversity_figure():
    from land.eval.report import ms_ssim_text

    assert ms_ssim_text({"mean": 0.5, "std": 0.01, "pairs": 3}) == "MS-SSIM 0.5000 ± 0.0100 over 3 pairs"
    one = ms_ssim_text({"mean": 0.9, "std": 0.0, "pairs": 1})
    assert one.startswith("MS-SSIM 0.9000 ± 0.0000 over 1 pair (") and "not a diversity figure" in one
