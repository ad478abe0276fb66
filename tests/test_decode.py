"""helpers.greedy_decode (notebook 10): the argmax of a full forward pass per step, stop tokens, no KV cache."""
import pytest
import torch

from helpers import COURSE_PROMPT, forward, generate, greedy_decode, load_model

SHAPES = ["gqa4", "mqa"]
N_NEW = 12


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models run faster on one thread


@pytest.fixture(scope="module")
def models(checkpoints):
    """{shape: (weights, params, prompt)}: random checkpoints (vocab 512) and a random prompt."""
    out = {}
    for i, shape in enumerate(SHAPES):
        weights, params = load_model(checkpoints[shape])
        vocab = weights["tok_embeddings.weight"].shape[0]
        prompt = torch.randint(0, vocab, (6 + i,), generator=torch.Generator().manual_seed(i)).tolist()
        out[shape] = weights, params, prompt
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_equals_repeated_argmax_of_forward(models, shape):
    weights, params, prompt = models[shape]
    expected, ids = [], list(prompt)
    for _ in range(N_NEW):
        expected.append(int(forward(weights, params, torch.tensor(ids))[-1].argmax()))
        ids.append(expected[-1])
    assert greedy_decode(weights, params, prompt, N_NEW) == expected
    assert greedy_decode(weights, params, torch.tensor(prompt), N_NEW) == expected  # a tensor prompt too
    assert greedy_decode(weights, params, prompt, 5) == expected[:5]


@pytest.mark.parametrize("shape", SHAPES)
def test_equals_generate_at_temperature_0(models, shape):
    """The cached loop of notebook 11 and the uncached one of notebook 10 choose the same tokens."""
    weights, params, prompt = models[shape]
    assert greedy_decode(weights, params, prompt, N_NEW) == generate(weights, params, prompt, N_NEW,
                                                                     temperature=0, stop_tokens=[])


def test_stops_at_a_stop_token_and_leaves_it_out(models):
    weights, params, prompt = models["mqa"]
    full = greedy_decode(weights, params, prompt, N_NEW)
    k = next(i for i in range(2, N_NEW) if full[i] not in full[:i])  # a token first produced at step k
    assert greedy_decode(weights, params, prompt, N_NEW, stop_tokens=[full[k]]) == full[:k]
    assert greedy_decode(weights, params, prompt, N_NEW, stop_tokens={full[k], full[0]}) == []  # the earliest wins
    assert greedy_decode(weights, params, prompt, N_NEW, stop_tokens=[-1]) == full  # one that never comes


def test_zero_new_tokens(models):
    weights, params, prompt = models["gqa4"]
    assert greedy_decode(weights, params, prompt, 0) == []


def test_prompt_is_not_modified(models):
    weights, params, prompt = models["gqa4"]
    before = list(prompt)
    greedy_decode(weights, params, prompt, 3)
    assert prompt == before


def test_tiny_model_equals_generate(tiny):
    """On the course's prompt both loops give "42" and stop at <|end_of_text|> (wiring: the tiny model was
    trained by the code under test; the random checkpoints above check the choice of tokens)."""
    weights, params, tokenizer = tiny
    prompt = tokenizer.encode(COURSE_PROMPT, bos=True, eos=False)
    stop = tokenizer.stop_tokens
    ours = greedy_decode(weights, params, prompt, 8, stop_tokens=stop)
    assert ours == generate(weights, params, prompt, 8)  # generate's default stop tokens are the tokenizer's
    assert tokenizer.decode(ours) == "42"
    unstopped = greedy_decode(weights, params, prompt, len(ours) + 2)
    assert unstopped == generate(weights, params, prompt, len(ours) + 2, stop_tokens=[])
    assert unstopped[len(ours)] == tokenizer.eos_id
