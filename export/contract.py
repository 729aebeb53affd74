"""The runtime's ONNX contract as a model card states it, and the card files that carry it.

service.inference checks the names and shapes at load time; these card
entries say the same for people and for runtimes without this code.
"""

from __future__ import annotations

from pathlib import Path

from service.inference import INPUT_NAME, OUTPUT_NAME

OUTPUT_DESCRIPTION = (
    "causal class logits of every input frame, in the order of 'labels'; float32 (batch, frames, classes). "
    "Frame t depends on input frames t - receptive_field_frames + 1 .. t only, so a stream scores its new frames "
    "with receptive_field_frames - 1 frames of left context. A window's probabilities are the softmax of the mean "
    "of its frames' logits (the engine pools the window's non-silent frames)."
)


def contract_entries(n_labels: int, receptive_field_frames: int) -> dict:
    """The card keys of the ONNX input/output contract."""
    return {
        "input": INPUT_NAME,
        "input_shape": ["batch", 20, "frames"],
        "input_description": "raw service.features.mfcc() output, transposed to (n_mfcc, frames); float32",
        "output": OUTPUT_NAME,
        "output_shape": ["batch", "frames", n_labels],
        "output_description": OUTPUT_DESCRIPTION,
        "receptive_field_frames": int(receptive_field_frames),
    }


def contract_sentence(card: dict) -> str:
    """The markdown card's sentence on the contract."""
    return (f"input `{card['input']}` (batch, 20, frames), output `{card['output']}` (batch, frames, "
            f"{len(card['labels'])}): frame logits, receptive field {card['receptive_field_frames']} frames.")


def write_card_files(card: dict, path: Path) -> None:
    """models.card.write_card, with the markdown's contract sentence stating the frame-logit output."""
    from models.card import write_card

    write_card(card, path)
    markdown = Path(path).with_suffix(".md")
    markdown.write_text(fix_markdown(markdown.read_text(), card))


def fix_markdown(text: str, card: dict, old_sha256: str | None = None) -> str:
    """The markdown card with its contract sentence (and, given the old one, its sha256) brought up to date."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if f"input `{card['input']}`" in line and "output `" in line:
            lines[index] = line[: line.index(f"input `{card['input']}`")] + contract_sentence(card)
    text = "\n".join(lines)
    return text.replace(old_sha256, card["onnx_sha256"]) if old_sha256 else text
