"""Our tokenizer encodes exactly as Meta's llama_models.llama3.tokenizer.Tokenizer, and the hand-written
`bpe_encode` (notebook 01) gives tiktoken's ids."""
import math

import pytest
import regex
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from helpers import LlamaError, load_tokenizer
from helpers.tokenizer import PAT_STR, bpe_encode, default_tokenizer_path, load_bpe_ranks, split_long_runs

SAMPLES = [
    "",
    "This is a test sentence.",
    "the answer to the ultimate question of life, the universe, and everything is ",
    "Grüße aus Zürich — ça va? Ελληνικά, русский, 日本語のテキスト, 中文分词, عربى, हिन्दी",
    "emoji: 🦙🦙 👩‍👩‍👧‍👦 🇫🇷 ✨",
    "def f(x):\r\n\treturn x  # tabs\tand CRLF\r\n\r\n\n\n    indented\n",
    "numbers 1 12 123 1234 12345 3.14159 1,000,000 0x1F",
    "I'm, you're, we've, they'll, she'd, it's, DON'T, I'M",
    "   leading and trailing spaces   ",
    "<|eot_id|> typed by a user, and <|begin_of_text|> too",
    "a" * 30_000,  # one non-whitespace run longer than Meta's 25,000 split limit
    " " * 26_000 + "x",
    ("word " * 90_000),  # 450,000 characters: more than tiktoken takes at once
    "\x00\x01 control chars \u200b zero width \ufeff bom",
]


@pytest.fixture(scope="module")
def meta():
    return MetaTokenizer.get_instance()


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer()


def test_metas_test_vector(ours):
    assert ours.encode("This is a test sentence.", bos=True, eos=True) == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]


@pytest.mark.parametrize("text", SAMPLES, ids=lambda s: repr(s[:20]))
@pytest.mark.parametrize("bos,eos", [(False, False), (True, False), (True, True)])
def test_encode_equals_meta(ours, meta, text, bos, eos):
    assert ours.encode(text, bos=bos, eos=eos) == meta.encode(text, bos=bos, eos=eos)


@pytest.mark.parametrize("text", SAMPLES, ids=lambda s: repr(s[:20]))
def test_round_trip(ours, text):
    assert ours.decode(ours.encode(text, bos=False, eos=False)) == text


def test_special_ids_equal_meta(ours, meta):
    assert ours.special_tokens == meta.special_tokens
    assert (ours.bos_id, ours.eos_id, ours.eot_id, ours.eom_id, ours.pad_id) == (
        meta.bos_id, meta.eos_id, meta.eot_id, meta.eom_id, meta.pad_id)
    assert ours.stop_tokens == meta.stop_tokens and ours.n_words == meta.n_words


def test_typed_special_token_is_plain_text(ours, meta):
    ids = ours.encode("<|eot_id|>", bos=False, eos=False)
    assert ours.eot_id not in ids and len(ids) > 1
    assert ours.decode(ids) == "<|eot_id|>"
    # ... unless the caller asks for it, as Meta's tokenizer allows too
    allowed = ours.encode("<|eot_id|>", bos=False, eos=False, allowed_special={"<|eot_id|>"})
    assert allowed == [ours.eot_id] == meta.encode("<|eot_id|>", bos=False, eos=False, allowed_special={"<|eot_id|>"})


def test_course_prompt_is_17_tokens_ending_in_a_space(ours):
    ids = ours.encode("the answer to the ultimate question of life, the universe, and everything is ", bos=True, eos=False)
    assert len(ids) == 17 and ids[-1] == 220 and ours.decode([ids[-1]]) == " "


def test_metas_cuts_keep_tiktoken_from_panicking(ours, meta):
    """Why the cuts stay (besides equal ids): the pinned tiktoken panics on one run of a million spaces."""
    text = " " * 1_000_000
    with pytest.raises(BaseException, match="StackOverflow"):  # pyo3's PanicException derives from BaseException
        ours.model.encode_ordinary(text)
    assert ours.encode(text, bos=False, eos=False) == meta.encode(text, bos=False, eos=False)


def test_a_cut_changes_the_ids_so_we_cut_where_meta_cuts(ours, meta):
    digits = "7" * 25_001  # Meta cuts after 25,000 = 3 * 8,333 + 1 digits: a lone digit ends the first chunk
    assert len(ours.encode(digits, bos=False, eos=False)) == len(ours.model.encode_ordinary(digits)) + 1
    assert ours.encode(digits, bos=False, eos=False) == meta.encode(digits, bos=False, eos=False)


def test_split_long_runs_keeps_every_character():
    text = "ab" * 10 + " " * 7 + "c" * 12
    pieces = list(split_long_runs(text, max_run=5))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 10


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(LlamaError, match="No tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_text("not base64 at all\n")
    with pytest.raises(LlamaError, match="not a tiktoken BPE file"):
        load_tokenizer(tmp_path)
    with pytest.raises(LlamaError, match="takes a str"):
        load_tokenizer().encode(b"bytes", bos=False, eos=False)


# Each text holds words that are tokens only through the whole-piece lookup (" důležité", " hợp", " например",
# " 스포츠", "中文字幕" ...) and many pieces that need merges. Emoji have no such token: merging alone gets them right.
MULTILINGUAL = {
    "Czech": "Příliš žluťoučký kůň úpěl ďábelské ódy. Pro jeho zdraví je to velmi důležité.",
    "Vietnamese": "Tiếng Việt rất phức tạp, nhưng nhiều điều đặc biệt: hợp tác và hiểu biết.",
    "Turkish": "Çekoslovakyalılaştıramadıklarımızdan mısınız? Yeni bir plan oluştur ve hedefe ulaş.",
    "Russian": "Съешь же ещё этих мягких французских булок, например, в качестве завтрака.",
    "Arabic": "سافرت إلى المدينة في يناير، وكانت الحياة هناك جديدة ومختلفة.",
    "Korean": "다람쥐 헌 쳇바퀴에 타고파. 오늘 오후 스포츠 뉴스가 나왔습니다.",
    "Chinese": "中文字幕，我能吞下玻璃而不伤身体。",
    "emoji": "🦙🦙 llamas 👍🏽 👩‍👩‍👧‍👦 🇫🇷 ✨",
}


@pytest.fixture(scope="module")
def ranks():
    return load_bpe_ranks(default_tokenizer_path())


def merge_only(piece: bytes, ranks: dict) -> list[int]:
    """The broken variant: bpe_encode without tiktoken's whole-piece lookup."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        rank, i = min((ranks.get(a + b, math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if rank == math.inf:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def by_hand(text: str, ranks: dict, encode_piece=bpe_encode) -> list[int]:
    return [i for piece in regex.findall(PAT_STR, text) for i in encode_piece(piece.encode("utf-8"), ranks)]


def test_bpe_encode_gives_every_token_of_the_table(ranks):
    assert len(ranks) == 128_000
    assert [t for t, r in ranks.items() if bpe_encode(t, ranks) != [r]] == []


@pytest.mark.parametrize("lang", MULTILINGUAL)
def test_bpe_encode_equals_tiktoken_and_meta(ours, meta, ranks, lang):
    text = MULTILINGUAL[lang]
    assert by_hand(text, ranks) == ours.model.encode_ordinary(text) == meta.encode(text, bos=False, eos=False)


def test_bpe_merges_equal_tiktoken_across_the_table(ours, ranks):
    """Every token minus its last byte, through tiktoken's own per-piece encoder: mostly not a token, so the
    merge loop runs on 127,744 pieces of every script."""
    pieces = [t[:-1] for t in ranks if len(t) > 1]
    assert [p for p in pieces if bpe_encode(p, ranks) != ours.model._encode_single_piece(p)] == []


def test_bpe_checks_fail_without_the_whole_piece_lookup(ours, ranks):
    unreachable = [t for t, r in ranks.items() if merge_only(t, ranks) != [r]]
    assert len(unreachable) == 588
    assert min(ranks[t] for t in unreachable) >= 100_256  # all in Meta's additions to OpenAI's cl100k_base
    assert {" důležité", " hợp", "ıldı"} <= {t.decode("utf-8", "replace") for t in unreachable}
    failing = {lang for lang, text in MULTILINGUAL.items() if by_hand(text, ranks, merge_only) != ours.model.encode_ordinary(text)}
    assert failing == set(MULTILINGUAL) - {"emoji"}
