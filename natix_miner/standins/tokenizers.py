"""Small tokenizers built in memory from the words a profile's prompts use (no hub, no files needed).

Stand-in checkpoints need a tokenizer their processor accepts; the real vocabularies are not in the
repo, so each one is built from the prompt words of the expert it serves (plus a base vocabulary),
with the special-token layout the architecture expects. The model keeps the real ``vocab_size``
(at ``full`` scale): every id of these tokenizers is inside it.

Usage::

    from natix_miner.standins.tokenizers import prompt_words, bert_tokenizer, clip_tokenizer
    words = prompt_words(spec.options)
    tok = clip_tokenizer(words, max_length=16)       # CLIP / OWLv2 / SAM 3 layout
"""

import typing

BASE_WORDS = ("a an the of in on with and or no photo dashcam road work roadwork construction zone site sign "
              "traffic cone cones barrier barriers lane closed clear normal street highway city car cars worker "
              "workers vest safety excavator roller vehicle detour barrel barricade orange empty").split()


def split_words(text: str) -> typing.List[str]:
    """Lower-cased words as the word-level tokenizers below split them (whitespace and punctuation)."""
    from tokenizers import pre_tokenizers

    return [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(str(text).lower())]


def prompt_words(options: typing.Mapping[str, typing.Any]) -> typing.List[str]:
    """Every word of an expert's text prompts (``prompts``, ``positive_prompts``, ``negative_prompts``)
    plus :data:`BASE_WORDS`, sorted and unique."""
    texts: typing.List[str] = []
    prompts = options.get("prompts")
    if isinstance(prompts, dict):
        for phrases in prompts.values():
            texts += [phrases] if isinstance(phrases, str) else list(phrases or [])
    for key in ("positive_prompts", "negative_prompts"):
        texts += list(options.get(key) or [])
    words = set(BASE_WORDS)
    for t in texts:
        words.update(split_words(t))
    return sorted(words)


def bert_tokenizer(words: typing.Sequence[str]):
    """A BERT WordPiece tokenizer with ``[CLS]`` 101, ``[SEP]`` 102, ``.`` 1012 and ``?`` 1029 where
    Grounding DINO looks for them (it marks phrase boundaries by these ids)."""
    from transformers import BertTokenizer

    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(toks))] + ["."]
    toks += [f"[unused{i}]" for i in range(2000, 2000 + 1029 - len(toks))] + ["?"]
    toks += [w for w in sorted(set(words)) if w not in (".", "?")] + [","]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(toks))}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def clip_tokenizer(words: typing.Sequence[str], max_length: int = 77):
    """CLIP's layout, word level: pad ``!`` = 0, ``<|startoftext|>`` / ``<|endoftext|>`` the two largest
    ids (CLIP and OWLv2 pool the text at the end-of-text token). Returns the fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"!": 0, "<|unk|>": 1}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="!", unk_token="<|unk|>", model_max_length=max_length)


def siglip_tokenizer(words: typing.Sequence[str], max_length: int = 64):
    """SigLIP's layout, word level: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2; text ends with ``<eos>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   model_max_length=max_length)
