"""A generated benchmark set for hybrid search: the shape photos of :mod:`generate` (whose captions the
demo model knows), some carrying a rendered sign (several fonts, sizes and angles; Latin, Chinese,
Japanese, Korean), some geotagged at known places (GPS EXIF), some keyworded (an XMP sidecar), with
queries of five kinds: the sign's text, the place, the keyword, the caption alone, and a look
("red circle") that a misleading description on another photo also mentions ("caption-distractor").

Written into OUT: the images, ``captions.jsonl`` (the ``bench`` format), ``truth.jsonl`` (per image:
the text fields and position the photo carries) and ``queries.jsonl`` (query, kind, relevant images).

    python -m searchlite.sample_data.hybrid OUT --count 120 --seed 7
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from searchlite.sample_data.generate import COLOURS, NOVEL_PAIRS, SHAPES, render, sample_scene

log = logging.getLogger(__name__)

#: signs per script (distinct words, so each query has a known set of relevant photos)
SIGNS = {
    "latin": ["BOULANGERIE", "INVOICE 4711", "Hauptbahnhof", "PHARMACIE", "Apotheke", "Museum Shop", "Gelateria",
              "Fahrradverleih"],
    "zh": ["东京站出口", "北京饭店", "上海银行", "人民公园"],
    "ja": ["東京駅南口", "大阪城公園", "ラーメン横丁", "札幌時計台"],
    "ko": ["서울역광장", "편의점입구", "커피전문점", "부산항여객"],
}
#: the text each query types: a Latin sign's first word, or a CJK substring of three characters
QUERY_OF = {"东京站出口": "东京站", "北京饭店": "北京饭", "上海银行": "上海银", "人民公园": "人民公",
            "東京駅南口": "東京駅", "大阪城公園": "大阪城", "ラーメン横丁": "ラーメン", "札幌時計台": "札幌時",
            "서울역광장": "서울역", "편의점입구": "편의점", "커피전문점": "커피전", "부산항여객": "부산항"}
PLACES = {  # query -> (stored place text, lat, lon)
    "Paris": ("Paris, Île-de-France, France", 48.8584, 2.2945),
    "Tokyo": ("Tokyo, 東京都, Japan, 日本", 35.6812, 139.7671),
    "Zurich": ("Zürich, Switzerland, Schweiz", 47.3769, 8.5417),
    "Kyoto": ("Kyoto, 京都府, Japan, 日本", 35.0116, 135.7681),
    "Berlin": ("Berlin, Germany, Deutschland", 52.5163, 13.3777),
    "Seoul": ("Seoul, 서울특별시, South Korea, 대한민국", 37.5547, 126.9707),
}
KEYWORDS = ["grandma", "wedding", "birthday", "hiking", "graduation", "christmas"]
FONTS = {
    "latin": ["/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
              "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"],
    "cjk": ["/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
            "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc"],
}
#: the Noto CJK collection's face per script (the .ttc holds JP, KR, SC, TC, HK in this order)
CJK_FACE = {"ja": 0, "ko": 1, "zh": 2}


def _font(script: str, size: int, rng: random.Random) -> ImageFont.ImageFont:
    paths = [p for p in FONTS["latin" if script == "latin" else "cjk"] if Path(p).is_file()]
    if not paths:
        log.warning("no %s font installed: using Pillow's default font", script)
        return ImageFont.load_default(size)
    path = rng.choice(paths)
    index = CJK_FACE.get(script, 0) if path.endswith(".ttc") else 0
    return ImageFont.truetype(path, size, index=index)


def draw_sign(image: Image.Image, text: str, script: str, rng: random.Random) -> Image.Image:
    """The photo with a sign: dark or light text on a contrasting plate, sized and turned at random."""
    width, height = image.size
    size = rng.randint(max(14, height // 14), max(16, height // 7))
    font = _font(script, size, rng)
    box = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0] + size, box[3] - box[1] + size
    dark = rng.random() < 0.5
    plate = Image.new("RGBA", (tw, th), (250, 250, 240, 255) if dark else (25, 25, 40, 255))
    ImageDraw.Draw(plate).text((size // 2 - box[0], size // 2 - box[1]), text, font=font,
                               fill=(15, 15, 15, 255) if dark else (250, 250, 250, 255))
    plate = plate.rotate(rng.uniform(-12, 12), expand=True, resample=Image.BICUBIC)
    if plate.width > width:
        plate = plate.resize((width, max(1, plate.height * width // plate.width)))
    x = rng.randint(0, max(0, width - plate.width))
    y = rng.randint(0, max(0, height - plate.height))
    out = image.convert("RGBA")
    out.alpha_composite(plate, (x, y))
    return out.convert("RGB")


def _gps_exif(lat: float, lon: float) -> Image.Exif:
    def dms(value: float) -> tuple[float, float, float]:
        value = abs(value)
        d = int(value)
        m = int((value - d) * 60)
        return float(d), float(m), round((value - d - m / 60) * 3600, 4)

    exif = Image.Exif()
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    return exif


def _xmp_sidecar(keywords: list[str]) -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>\n")


def generate(out: Path, count: int = 120, seed: int = 7) -> Path:
    """Write the set into ``out`` (see the module docstring); returns ``queries.jsonl``.

    About a third of the photos carry a sign, a fifth a position, a sixth a keyword (kinds overlap);
    every sign, place and keyword used is queried, and so are the captions of eight photos."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"hybrid:{seed}")
    # scripts take turns, so a small set has signs in all four
    signs = [(script, texts[j]) for j in range(max(map(len, SIGNS.values())))
             for script, texts in SIGNS.items() if j < len(texts)]
    captions, truth, scenes = [], [], []
    pairs = [(c, sh) for c in COLOURS for sh in SHAPES if (c, sh) not in NOVEL_PAIRS]
    relevant: dict[tuple[str, str], list[str]] = {}
    for i in range(count):
        scene = sample_scene(rng, "test")
        image = render(scene, rng, 640, 480)
        name = f"hybrid-{seed}-{i:05d}.jpg"
        fields: dict[str, str] = {}
        lat = lon = None
        if i % 3 == 0:
            script, text = signs[(i // 3) % len(signs)]
            image = draw_sign(image, text, script, rng)
            fields["ocr"] = text
            query = QUERY_OF.get(text, text.split()[0])
            relevant.setdefault((query, f"ocr-{script}"), []).append(name)
        if i % 5 == 1:
            query = list(PLACES)[(i // 5) % len(PLACES)]
            fields["place"], lat, lon = PLACES[query]
            relevant.setdefault((query, "place"), []).append(name)
        if i % 6 == 2:
            keyword = KEYWORDS[(i // 6) % len(KEYWORDS)]
            fields["keywords"] = keyword
            (out / name).with_suffix(".xmp").write_text(_xmp_sidecar([keyword]))
            relevant.setdefault((keyword, "keywords"), []).append(name)
        if i % 7 == 4:  # a misleading description: words of another photo's look (the fusion must not trust it blindly)
            colour, shape = rng.choice([p for p in pairs if p != (scene.colour, scene.shape)])
            fields["description"] = f"an old sticker with a {colour} {shape}"
            relevant.setdefault((f"{colour} {shape}", "caption-distractor"), [])
        scenes.append((name, scene))
        exif = _gps_exif(lat, lon) if lat is not None else Image.Exif()
        image.save(out / name, quality=90, exif=exif.tobytes())
        captions.append({"image": name, "caption": scene.caption})
        truth.append({"image": name, "fields": fields, "lat": lat, "lon": lon})
    by_caption: dict[str, list[str]] = {}
    for c in captions:
        by_caption.setdefault(c["caption"], []).append(c["image"])
    for (query, kind), names in relevant.items():  # a distractor query's photos: those that look like it
        if kind == "caption-distractor":
            colour, shape = query.split()
            names.extend(n for n, sc in scenes if (sc.colour, sc.shape) == (colour, shape))
    relevant = {key: names for key, names in relevant.items() if names}
    for c in rng.sample(captions, min(8, len(captions))):
        relevant.setdefault((c["caption"], "caption"), by_caption[c["caption"]])
    (out / "captions.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in captions))
    (out / "truth.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truth))
    queries = out / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": q, "kind": kind, "relevant": names}, ensure_ascii=False) + "\n"
                               for (q, kind), names in relevant.items()))
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    path = generate(args.out, args.count, args.seed)
    print(f"wrote {args.count} images and {path}")


if __name__ == "__main__":
    main()
