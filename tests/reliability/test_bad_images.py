"""Bad and unusual image files: each is named in a clear error, or converted as PIL would show it.

References are independent of densevit: PIL (``convert('RGB')``, ``ImageOps.exif_transpose``) and
hand-computed values.
"""
import json
import struct

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from densevit.datasets.coco import CocoDataset
from densevit.datasets.transforms import LoadImageFromFile, read_image


def _pattern(h: int = 40, w: int = 60) -> np.ndarray:
    """A smooth colour pattern (JPEG keeps it within a few levels) with no symmetry."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + 2 * y) % 256], -1).astype(np.uint8)


def _jpeg(path: str, rgb: np.ndarray, **save_args) -> bytes:
    Image.fromarray(rgb).save(path, quality=95, **save_args)
    with open(path, 'rb') as f:
        return f.read()


def test_missing_image_is_named(tmp_path):
    path = str(tmp_path / 'nowhere.jpg')
    with pytest.raises(FileNotFoundError, match='nowhere.jpg does not exist'):
        LoadImageFromFile()(dict(img_path=path))


def test_zero_byte_image_is_named(tmp_path):
    path = tmp_path / 'empty.jpg'
    path.write_bytes(b'')
    with pytest.raises(OSError, match=r'empty.jpg is empty \(0 bytes\)'):
        read_image(str(path))


def test_truncated_jpeg_is_named(tmp_path):
    data = _jpeg(str(tmp_path / 'full.jpg'), _pattern())
    path = tmp_path / 'cut.jpg'
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(OSError, match='cut.jpg is a truncated JPEG'):
        read_image(str(path))


def test_truncated_jpeg_with_a_complete_thumbnail_is_named(tmp_path):
    """An EXIF thumbnail carries its own end-of-image marker early in the file; the cut main image
    must still be caught."""
    main = _jpeg(str(tmp_path / 'main.jpg'), _pattern())
    thumb = _jpeg(str(tmp_path / 'thumb.jpg'), _pattern(8, 12))
    payload = b'Exif\x00\x00' + thumb
    with_thumb = main[:2] + b'\xff\xe1' + struct.pack('>H', len(payload) + 2) + payload + main[2:]
    whole = tmp_path / 'whole.jpg'
    whole.write_bytes(with_thumb)
    np.testing.assert_array_equal(read_image(str(whole)), read_image(str(tmp_path / 'main.jpg')))
    cut = tmp_path / 'cut.jpg'
    cut.write_bytes(with_thumb[:len(with_thumb) - len(main) // 3])
    with pytest.raises(OSError, match='cut.jpg is a truncated JPEG'):
        read_image(str(cut))


def test_jpeg_with_bytes_after_its_end_loads(tmp_path):
    """Some cameras append data after the end-of-image marker: not a truncation."""
    data = _jpeg(str(tmp_path / 'a.jpg'), _pattern())
    (tmp_path / 'b.jpg').write_bytes(data + b'\x00\x00trailer')
    np.testing.assert_array_equal(read_image(str(tmp_path / 'b.jpg')),
                                  np.asarray(Image.open(tmp_path / 'a.jpg').convert('RGB')))


def test_not_an_image_is_named(tmp_path):
    path = tmp_path / 'notes.jpg'
    path.write_text('this is text, not a picture')
    with pytest.raises(OSError, match=r"notes.jpg could not be decoded .*b'this is "):
        read_image(str(path))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _pattern()[..., 0]
    Image.fromarray(gray, mode='L').save(tmp_path / 'g.png')
    img = read_image(str(tmp_path / 'g.png'))
    assert img.shape == (40, 60, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    rgb = _pattern()
    alpha = np.linspace(0, 255, 60, dtype=np.uint8)[None].repeat(40, 0)
    Image.fromarray(np.dstack([rgb, alpha]), mode='RGBA').save(tmp_path / 'a.png')
    np.testing.assert_array_equal(read_image(str(tmp_path / 'a.png')), rgb)


def test_palette_png_is_expanded_to_its_colours(tmp_path):
    palette_img = Image.fromarray(_pattern()).quantize(colors=16)
    palette_img.save(tmp_path / 'p.png')
    reference = np.asarray(Image.open(tmp_path / 'p.png').convert('RGB'))
    img = read_image(str(tmp_path / 'p.png'))
    np.testing.assert_array_equal(img, reference)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) <= 16


@pytest.mark.parametrize('channels', [1, 3])
def test_16_bit_png_keeps_the_high_byte(tmp_path, channels):
    """value >> 8 (scikit-image's img_as_ubyte rule), not clipped to 255 as PIL's convert does."""
    rng = np.random.default_rng(0)
    shape = (10, 12) if channels == 1 else (10, 12, 3)
    values = rng.integers(0, 65536, shape, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / 'd.png'), values if channels == 1 else values[..., ::-1])
    img = read_image(str(tmp_path / 'd.png'))
    expected = (values >> 8).astype(np.uint8)
    if channels == 1:
        expected = np.repeat(expected[..., None], 3, -1)
    np.testing.assert_array_equal(img, expected)


@pytest.mark.parametrize('orientation', [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = _pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / 'o.jpg')
    _jpeg(path, stored, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert('RGB'))
    img = read_image(path)
    assert img.shape == upright.shape
    assert np.abs(img.astype(int) - upright).max() <= 2
    if orientation in (5, 6, 7, 8):
        assert img.shape[:2] == (60, 40)  # turned a quarter


def _exif_coco(tmp_path, ann_height: int, ann_width: int) -> CocoDataset:
    """One EXIF-rotated image (stored sideways, tag 6) of an upright 40x60 scene with a white
    rectangle at x 5..25, y 10..20, annotated with that rectangle."""
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[10:20, 5:25] = 255
    stored = np.rot90(upright, 1).copy()  # tag 6 means: turn 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / 'img').mkdir(exist_ok=True)
    _jpeg(str(tmp_path / 'img' / 'r.jpg'), stored, exif=exif.tobytes())
    ann = dict(images=[dict(id=1, file_name='r.jpg', height=ann_height, width=ann_width)],
               annotations=[dict(id=1, image_id=1, category_id=1, bbox=[5, 10, 20, 10],
                                 iscrowd=0, area=200)],
               categories=[dict(id=1, name='person')])
    (tmp_path / 'ann.json').write_text(json.dumps(ann))
    return CocoDataset(ann_file=str(tmp_path / 'ann.json'), data_root=str(tmp_path),
                       data_prefix=dict(img='img/'), metainfo=dict(classes=('person',)),
                       pipeline=[dict(type='LoadImageFromFile'),
                                 dict(type='LoadAnnotations', with_bbox=True),
                                 dict(type='PackDetInputs')])


def test_exif_rotated_image_matches_a_box_drawn_upright(tmp_path):
    sample = _exif_coco(tmp_path, 40, 60)[0]
    img = sample['inputs'].permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    assert img.shape == (40, 60, 3)
    x1, y1, x2, y2 = sample['data_samples'].gt_instances.bboxes[0].int().tolist()
    inside = img[y1:y2, x1:x2]
    outside = img.astype(int).sum() - inside.astype(int).sum()
    assert inside.mean() > 200
    assert outside / (img.size - inside.size) < 20


def test_annotation_sized_for_the_sideways_pixels_is_an_error(tmp_path):
    dataset = _exif_coco(tmp_path, 60, 40)
    with pytest.raises(ValueError, match=r'r.jpg has size \(h, w\) \(40, 60\) as loaded .*EXIF'
                                         r'.*says \(60, 40\)'):
        dataset[0]
