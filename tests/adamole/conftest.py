"""Shared fixtures of the AdaMoLE tests (layer and classifier). Add fixtures; don't rewrite others'."""

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------------
# AdaMoLEClassifier fixtures: tiny BERT-like and Llama-like models with word-level tokenizers,
# built from a config and saved into a session tmp dir (passed to the estimator as a path string).
# ---------------------------------------------------------------------------------------------

POS_WORDS = ["good", "great", "nice", "excellent", "fun", "lovely", "superb", "wonderful"]
NEG_WORDS = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "worst"]
FILLER = ["the", "film", "movie", "plot", "was", "is", "a", "very", "story", "acting", "and", "it"]
# words of the lm-head prompt, class names and label words used by the tests
PROMPT_WORDS = [
    "Text",
    "Choices",
    "Answer",
    "A",
    "B",
    "C",
    "D",
    "1",
    "2",
    ":",
    ".",
    "-",
    "neg",
    "pos",
    "negative",
    "positive",
    "mixed",
    "yes",
    "no",
    "cat",
    "dog",
]


def _corpus():
    return [" ".join(POS_WORDS + NEG_WORDS + FILLER + PROMPT_WORDS)]


def _word_level_tokenizer(specials, *, post=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    order = list(dict.fromkeys(specials.values()))
    tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=order))
    if post is not None:
        tok.post_processor = post(tok)
    return tok


def _save_bert(path):
    from tokenizers import processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
    }

    def post(tok):
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )

    backend = _word_level_tokenizer(specials, post=post)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=64, **specials)
    config = BertConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _save_llama(path, *, with_eos=True):
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = {"unk_token": "<unk>", "bos_token": "<s>"}
    if with_eos:
        specials["eos_token"] = "</s>"

    def post(tok):
        bos = tok.token_to_id("<s>")
        return processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
        )

    backend = _word_level_tokenizer(specials, post=post)
    # no pad token on purpose: decoders usually ship without one
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=128, **specials)
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.2,  # larger than real models so that a few steps move the logits
    )
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def clf_bert_dir(tmp_path_factory):
    """Path (str) of a tiny BERT-like encoder (BertModel weights, word-level tokenizer)."""
    pytest.importorskip("transformers")
    return _save_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def clf_llama_dir(tmp_path_factory):
    """Path (str) of a tiny Llama-like decoder (LlamaForCausalLM, tokenizer without a pad token)."""
    pytest.importorskip("transformers")
    return _save_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def clf_llama_no_eos_dir(tmp_path_factory):
    """Tiny Llama-like decoder whose tokenizer has neither a pad nor an EOS token."""
    pytest.importorskip("transformers")
    return _save_llama(tmp_path_factory.mktemp("tiny_llama_no_eos"), with_eos=False)


def _make_sentiment(n, seed=0, labels=("neg", "pos")):
    """A trivially separable sentiment task: every text holds 1-2 words of its class."""
    rng = np.random.RandomState(seed)
    texts, y = [], []
    for i in range(n):
        c = i % 2
        words = list(rng.choice(FILLER, size=rng.randint(0, 3)))
        words += list(rng.choice(POS_WORDS if c else NEG_WORDS, size=rng.randint(2, 5)))
        rng.shuffle(words)
        texts.append(" ".join(words))
        y.append(labels[c])
    return texts, np.asarray(y, dtype=object if not isinstance(labels[0], str) else None)


@pytest.fixture(scope="session")
def sentiment_data():
    """(X_train, y_train, X_test, y_test) with string labels 'neg'/'pos'."""
    X, y = _make_sentiment(96, seed=0)
    Xt, yt = _make_sentiment(40, seed=1)
    return X, y, Xt, yt


# ---------------------------------------------------------------------------------------------
# AdaMoLE layer / peft-integration fixtures: tiny models built in memory from a config (nothing
# downloaded, nothing saved), re-creatable with identical weights from a seed.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_llama_factory():
    """``make(seed=0, **config_overrides) -> LlamaForCausalLM`` (hidden 32, 2 layers, GQA)."""
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed=0, **overrides):
        kwargs = {
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "tie_word_embeddings": False,
            "pad_token_id": 0,
        }
        kwargs.update(overrides)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlamaForCausalLM(LlamaConfig(**kwargs)).eval()

    return make


@pytest.fixture(scope="session")
def tiny_bert_factory():
    """``make(seed=0, num_labels=2, **config_overrides) -> BertForSequenceClassification``."""
    pytest.importorskip("transformers")
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    def make(seed=0, num_labels=2, **overrides):
        kwargs = {
            "vocab_size": 64,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "max_position_embeddings": 64,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "num_labels": num_labels,
            "pad_token_id": 0,
        }
        kwargs.update(overrides)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return BertForSequenceClassification(BertConfig(**kwargs)).eval()

    return make


@pytest.fixture
def token_batch():
    """``(input_ids [3, 9], attention_mask [3, 9])`` with right padding in rows 1 and 2."""
    import torch

    gen = torch.Generator().manual_seed(123)
    ids = torch.randint(1, 64, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="session")
def make_sentiment():
    """The generator of the separable sentiment task: ``make_sentiment(n, seed) -> (texts, y)``."""
    return _make_sentiment
