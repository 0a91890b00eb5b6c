"""Real-photo decoding: orientation, alpha, odd modes, animation, bombs, draft, HEIC, capture date."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from PIL import Image

from clipdex.errors import DecodeError
from clipdex.imaging import fit_square, is_image_path, open_image


def exif_with(orientation: int | None = None, when: str | None = None) -> Image.Exif:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    if when:
        exif.get_ifd(0x8769)[36867] = when
    return exif


def test_exif_orientation_is_applied(tmp_path):
    # stored 200 wide x 100 high, left half red; orientation 6 means "rotate 90 clockwise to view"
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)
    arr[:, 100:] = (0, 0, 255)
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif_with(6), quality=95)
    dec = open_image(path)
    assert (dec.width, dec.height) == (100, 200)
    assert dec.image.size == (100, 200)
    top, bottom = np.asarray(dec.image)[20, 50], np.asarray(dec.image)[180, 50]
    assert top[0] > 200 and top[2] < 60      # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_capture_date_from_exif(tmp_path):
    path = tmp_path / "dated.jpg"
    Image.new("RGB", (32, 32)).save(path, exif=exif_with(when="2021:07:14 18:30:05"))
    assert open_image(path).captured_at == dt.datetime(2021, 7, 14, 18, 30, 5)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32)).save(plain)
    assert open_image(plain).captured_at is None


def test_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "alpha.png"
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 20, 40))
    im.save(path)
    arr = np.asarray(open_image(path).image)
    assert tuple(arr[10, 30]) == (255, 255, 255)
    assert tuple(arr[10, 5]) == (255, 0, 0)


@pytest.mark.parametrize("mode,fill", [("CMYK", (0, 255, 255, 0)), ("L", 128), ("P", 3), ("1", 1), ("LA", (90, 255))])
def test_odd_modes_become_rgb(tmp_path, mode, fill):
    path = tmp_path / f"odd-{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (40, 30), fill).save(path)
    dec = open_image(path)
    assert dec.image.mode == "RGB" and (dec.width, dec.height) == (40, 30)


def test_16_bit_greyscale_keeps_its_brightness(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(path)
    arr = np.asarray(open_image(path).image)
    assert arr.shape == (30, 30, 3) and 150 <= arr[0, 0, 0] <= 160  # 40000/65535*255 = 155.6


def test_animated_gif_uses_its_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (30, 30), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, g, b = np.asarray(open_image(path).image)[15, 15]
    assert r > 200 and b < 50


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(path, quality=80)
    dec = open_image(path, target_size=224)
    assert (dec.width, dec.height) == (4000, 3000)   # the true size is recorded
    assert dec.image.size == (500, 375)              # decoded at 1/8 scale by draft()
    assert fit_square(dec.image, 224).shape == (224, 224, 3)


def test_decompression_bomb_is_refused(tmp_path):
    from tests.test_bad_files import bomb_png

    path = tmp_path / "bomb.png"
    bomb_png(path)
    with pytest.raises(DecodeError, match="possible decompression bomb"):
        open_image(path)


def test_heic_is_read_through_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "photo.HEIC"
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (200, 30, 30))).save(path, quality=90)
    dec = open_image(path)
    assert (dec.width, dec.height) == (64, 48)
    assert np.asarray(dec.image)[24, 32][0] > 150
    assert is_image_path(path)


def test_extensions_are_case_insensitive():
    assert is_image_path("a/B.JPG") and is_image_path("x.Tiff") and is_image_path("y.webp")
    assert not is_image_path("notes.txt")
