from __future__ import annotations

import csv
import hashlib
import warnings

import numpy as np
import pytest
from PIL import Image

from skrd4ad.data import load_category, make_default_dataset, prepare_visa
from skrd4ad.data.images import MaskSizeWarning, image_tensor, mask_tensor
from skrd4ad.data.tensors import category_tensors, decode_test_split
from skrd4ad.errors import DataError


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_default_dataset_is_deterministic(tmp_path):
    kwargs = dict(image_size=64, crop_size=96, n_train=5, n_test_good=2, n_test_defect=1)
    a = make_default_dataset(tmp_path / "a", **kwargs)
    b = make_default_dataset(tmp_path / "b", **kwargs)
    assert a == b
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    c = make_default_dataset(tmp_path / "c", **{**kwargs, "seed": 1})
    assert a != c


def test_default_dataset_layout_and_counts(tmp_path):
    make_default_dataset(
        tmp_path, image_size=64, crop_size=96, n_train=6, n_test_good=3, n_test_defect=2
    )
    for cat in ("brick", "grass", "gravel"):
        data = load_category(tmp_path, cat)
        assert data.layout == "mvtec" and data.has_masks
        assert len(data.train) == 6
        assert sum(s.label == 0 for s in data.test) == 3
        assert data.defect_types == ["hole", "patch", "scratch", "stain"]
        ts = decode_test_split(data, 64)
        assert ts.images.shape == (3 + 4 * 2, 3, 64, 64)
        has_defect = ts.masks.flatten(1).any(1)
        assert (has_defect == ts.labels.bool()).all()


def test_mvtec_layout_extensions_and_mask_pairing(tmp_path):
    cat = tmp_path / "widget"
    rgb = np.full((20, 20, 3), 120)
    save(cat / "train" / "good" / "a.png", rgb)
    save(cat / "train" / "good" / "b.JPG", rgb)
    save(cat / "train" / "good" / "c.bmp", rgb)
    save(cat / "test" / "good" / "d.png", rgb)
    save(cat / "test" / "crack" / "e.PNG", rgb)
    m = np.zeros((20, 20))
    m[5:9, 5:9] = 255
    save(cat / "ground_truth" / "crack" / "e_mask.png", m)
    (cat / "train" / "good" / "notes.txt").write_text("ignored")
    data = load_category(tmp_path, "widget")
    assert [p.path.name for p in data.train] == ["a.png", "b.JPG", "c.bmp"]
    crack = [s for s in data.test if s.defect == "crack"]
    assert crack[0].mask.name == "e_mask.png"
    ts = decode_test_split(data, 40)  # 2x nearest: the 4x4 defect becomes 8x8
    assert int(ts.masks[[s.defect == "crack" for s in data.test].index(True)].sum()) == 64


def test_vad_layout_is_image_level(tmp_path):
    cat = tmp_path / "vad"
    rgb = np.full((16, 16, 3), 90)
    save(cat / "train" / "good" / "0.png", rgb)
    save(cat / "train" / "bad" / "1.png", rgb)
    save(cat / "test" / "good" / "2.png", rgb)
    save(cat / "test" / "bad" / "3.png", rgb)
    save(cat / "test" / "bad_unseen_defects" / "4.png", rgb)
    data = load_category(tmp_path, "vad")
    assert data.layout == "vad" and not data.has_masks
    assert [s.path.name for s in data.train] == ["0.png"]  # train/bad never used
    assert sorted(s.defect for s in data.test) == ["bad", "bad_unseen_defects", "good"]
    assert decode_test_split(data, 32).masks is None


def test_folder_layout_loads_hazelnut_toy(hazelnut_root):
    data = load_category(hazelnut_root, None, train_fraction=0.5, seed=3)
    again = load_category(hazelnut_root, None, train_fraction=0.5, seed=3)
    assert data.layout == "folder" and data.has_masks
    assert [s.path for s in data.train] == [s.path for s in again.train]
    assert len(data.train) == 17 and len(data.test) == 17 + 17
    assert all(s.mask is not None and s.mask.parent.name == "colour" for s in data.test if s.label)
    train_names = {s.path for s in data.train}
    assert not train_names & {s.path for s in data.test}
    other = load_category(hazelnut_root, None, train_fraction=0.7, seed=3)
    assert len(other.train) == 24


def test_visa_prepare_binarises_masks(tmp_path):
    raw = tmp_path / "raw"
    img = np.full((24, 24, 3), 50)
    mask = np.zeros((24, 24))
    mask[2:6, 2:6] = 1  # raw VisA masks hold small ids, not 255
    rows = []
    for name, split, label in [
        ("n0", "train", "normal"),
        ("n1", "test", "normal"),
        ("a0", "test", "anomaly"),
    ]:
        sub = "Normal" if label == "normal" else "Anomaly"
        save(raw / "pcb1" / "Data" / "Images" / sub / f"{name}.JPG", img)
        m = ""
        if label == "anomaly":
            m = f"pcb1/Data/Masks/Anomaly/{name}.png"
            save(raw / m, mask)
        rows.append(
            {
                "object": "pcb1",
                "split": split,
                "label": label,
                "image": f"pcb1/Data/Images/{sub}/{name}.JPG",
                "mask": m,
            }
        )
    (raw / "split_csv").mkdir()
    with (raw / "split_csv" / "1cls.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    counts = prepare_visa(raw, tmp_path / "out")
    assert counts == {"pcb1": {"train/good": 1, "test/good": 1, "test/bad": 1}}
    out_mask = np.asarray(Image.open(tmp_path / "out/pcb1/ground_truth/bad/a0_mask.png"))
    assert set(np.unique(out_mask)) == {0, 255}
    data = load_category(tmp_path / "out", "pcb1")
    assert data.has_masks and len(data.test) == 2


def test_image_modes_are_converted_to_rgb(tmp_path):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((10, 10), 200, np.uint8)).save(gray)
    pal = tmp_path / "p.png"
    Image.fromarray(np.full((10, 10, 3), 30, np.uint8)).convert("P").save(pal)
    rgba = tmp_path / "a.png"
    Image.fromarray(np.full((10, 10, 4), 77, np.uint8), "RGBA").save(rgba)
    for path in (gray, pal, rgba):
        t = image_tensor(path, 32)
        assert t.shape == (3, 32, 32)
    m = np.zeros((10, 10), np.uint8)
    m[:5] = 7
    Image.fromarray(m).save(tmp_path / "m.png")
    mt, graded = mask_tensor(tmp_path / "m.png", 20)
    assert mt.dtype.is_floating_point is False and int(mt.sum()) == 200 and not graded


def test_mask_size_mismatch_is_resized_with_warning(tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "m.png")
    with pytest.warns(MaskSizeWarning, match="m.png"):
        mask_tensor(tmp_path / "m.png", 16, image_size=(20, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_tensor(tmp_path / "m.png", 16, image_size=(10, 10))


def test_validation_split_never_uses_test_and_has_synthetic_defects(tmp_path):
    make_default_dataset(
        tmp_path,
        categories=("brick",),
        image_size=64,
        crop_size=96,
        n_train=10,
        n_test_good=1,
        n_test_defect=1,
    )
    data = load_category(tmp_path, "brick")
    train, val = category_tensors(data, 64, 0.4, seed=0)
    assert len(train) == 6 and len(val) == 4
    test_paths = {str(s.path) for s in data.test}
    assert not (set(train.paths) | set(val.paths)) & test_paths
    assert set(val.paths) <= {str(s.path) for s in data.train}
    assert val.labels.tolist() == [1, 0, 1, 0]
    assert bool(val.masks[0].any()) and not bool(val.masks[1].any())


def test_missing_category_and_empty_train(tmp_path):
    make_default_dataset(
        tmp_path,
        categories=("brick",),
        image_size=32,
        crop_size=64,
        n_train=2,
        n_test_good=1,
        n_test_defect=1,
    )
    with pytest.raises(DataError, match=r"category 'tile' not found.*available: brick"):
        load_category(tmp_path, "tile")
    for p in (tmp_path / "brick" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="empty train set"):
        load_category(tmp_path, "brick")


def test_16_bit_images_are_scaled_to_8_bits_not_clipped_white(tmp_path):
    """A real 16-bit PNG (mode I;16, as industrial cameras write): each value v becomes
    round(v / 257), the same image an 8-bit export would give."""
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode == "I;16"
    t = image_tensor(tmp_path / "g16.png", 32)
    expected = np.round(ramp / 257).astype(np.uint8)
    for channel in t.numpy():
        assert np.array_equal(channel, expected)
    assert t.float().mean() < 140  # clipped, it was all but white (254.5)


def test_non_binary_masks_binarise_at_half_their_maximum_with_one_warning(tmp_path):
    cat = tmp_path / "widget"
    rgb = np.full((16, 16, 3), 120)
    for name in ("a", "b", "c"):
        save(cat / "train" / "good" / f"{name}.png", rgb)
    save(cat / "test" / "good" / "g.png", rgb)
    graded = np.zeros((16, 16), np.uint8)
    graded[4:8, 4:8] = 255
    graded[3, 4:8] = 64  # a faint antialiased edge: below half, not defect
    graded[8, 4:8] = 200  # a strong one: defect
    ones = np.zeros((16, 16), np.uint8)
    ones[0:2, 0:2] = 1  # a 0/1 mask is binary: its maximum is 1
    for name, mask in (("x", graded), ("y", graded), ("z", ones)):
        save(cat / "test" / "crack" / f"{name}.png", rgb)
        save(cat / "ground_truth" / "crack" / f"{name}_mask.png", mask)
    data = load_category(tmp_path, "widget")
    with pytest.warns(UserWarning, match=r"2 of 3 masks under .*ground_truth are not binary") as w:
        ts = decode_test_split(data, 16)
    assert sum("not binary" in str(x.message) for x in w) == 1
    x = ts.masks[ts.paths.index(str(cat / "test" / "crack" / "x.png"))]
    assert int(x.sum()) == 16 + 4 and bool(x[8, 4]) and not bool(x[3, 4])
    z = ts.masks[ts.paths.index(str(cat / "test" / "crack" / "z.png"))]
    assert int(z.sum()) == 4


def test_empty_mask_of_a_defective_image_is_named(tmp_path):
    cat = tmp_path / "widget"
    rgb = np.full((16, 16, 3), 120)
    save(cat / "train" / "good" / "a.png", rgb)
    save(cat / "test" / "good" / "g.png", rgb)
    full = np.zeros((16, 16), np.uint8)
    full[2:6, 2:6] = 255
    for name, mask in (("ok", full), ("blank", np.zeros((16, 16), np.uint8))):
        save(cat / "test" / "dent" / f"{name}.png", rgb)
        save(cat / "ground_truth" / "dent" / f"{name}_mask.png", mask)
    with pytest.warns(UserWarning, match=r"1 defective images have an empty mask.*blank_mask"):
        decode_test_split(load_category(tmp_path, "widget"), 16)
