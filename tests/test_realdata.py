"""The contract, folds and prior on the competition's real label files (skipped when absent)."""
from __future__ import annotations

import pandas as pd
import pytest
from kaggle_folder import link_realdata

from rsna2024.baselines.prior import evaluate_prior
from rsna2024.data.contract import load_coordinates, load_labels_wide
from rsna2024.data.folds import compute_folds, severity_profile
from rsna2024.data.validate import validate_data

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return link_realdata(tmp_path_factory.mktemp("real") / "data")


def test_validate_passes_on_the_real_files(real_dir):
    report = validate_data(real_dir)
    assert report.ok, report.format()
    text = report.format()
    assert "studies: 1975 (train.csv)" in text
    assert "labels: 48803 present (Normal/Mild 37754, Moderate 7960, Severe 3089)" in text
    assert "missing labels: 572 in 185 studies" in text
    assert "series: 6294 in 1975 studies (Sagittal T1 1980, Sagittal T2/STIR 1974, Axial T2 2340)" in text
    assert "images: not checked" in text
    warnings = "\n".join(report.warnings)
    assert "labels without a coordinate row (146)" in warnings
    assert "coordinate rows without a label (missing in train.csv) (35)" in warnings
    assert "studies without a Sagittal T1 series (2)" in warnings
    assert "studies without a Sagittal T2/STIR series (1)" in warnings


def test_real_coordinates_have_no_duplicate_points_and_match_their_series_type(real_dir):
    coords = load_coordinates(real_dir)  # raises on duplicates or undescribed series
    assert len(coords) == 48692
    assert not coords.duplicated(["study_id", "condition", "level"]).any()
    assert coords["series_description"].notna().all()


def test_real_folds_are_balanced_in_size_and_severity(real_dir):
    wide = load_labels_wide(real_dir)
    folds = compute_folds(real_dir)
    assert folds["fold"].value_counts().tolist() == [395] * 5
    profile = pd.Series(severity_profile(wide).to_numpy(), index=wide["study_id"])
    table = pd.crosstab(profile.loc[folds["study_id"]].to_numpy(), folds["fold"].to_numpy())
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()
    severe_spinal = profile.str.startswith("s2").loc[folds["study_id"]].groupby(folds["fold"].to_numpy()).sum()
    assert severe_spinal.max() - severe_spinal.min() <= 1


def test_real_prior_scores_near_the_published_floor(real_dir):
    weighted = evaluate_prior(real_dir)
    assert weighted["total"] == pytest.approx(0.792, abs=0.01)
    plain = evaluate_prior(real_dir, weighted=False)
    assert plain["total"] == pytest.approx(0.933, abs=0.01)
