"""Position ids of the tokens after a compressed image: the layouts a model can be set to (numpy only,
so that the tools can list the choices before Paddle loads; docs/positions.md)."""
import numpy as np

# How the LLM numbers the text after a compressed image (rotary positions):
#   compact  the sequence as it is: text follows the kept visual tokens (LLaVA and every released
#            compression method)
#   full     the text keeps the positions it would have had with all N visual tokens; the kept visual
#            tokens stay consecutive. A model trained only on full images then sees its prompt's text
#            where it always saw it (docs/positions.md).
#   source   the text as in full, and each kept visual token at the position its own patch has with all
#            N tokens: the token's place in the image stays readable from its position id.
POSITIONS = ("compact", "full", "source")


def check_positions(positions) -> None:
    from paddle_rc.errors import UserError

    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")


def full_positions(mask: np.ndarray, is_visual: np.ndarray, n_visual: int) -> np.ndarray:
    """Position ids [B,L] for `positions: full`: as positions_from_mask, then every token after a row's
    visual tokens moved on by the tokens compression removed (n_visual - kept), as if all n_visual
    tokens were there. mask, is_visual: [B,L] (left-padded rows)."""
    pos = np.maximum(np.cumsum(mask.astype(np.int64), axis=1) - 1, 0)
    kept = is_visual.sum(axis=1, keepdims=True)
    after = (np.cumsum(is_visual, axis=1) == kept) & ~is_visual & (kept > 0) & mask.astype(bool)
    return pos + after * (n_visual - kept)


def source_positions(mask: np.ndarray, is_visual: np.ndarray, sources: np.ndarray, n_visual: int) -> np.ndarray:
    """Position ids [B,L] for `positions: source`: the text as full_positions, each visual token at
    p + its patch index (p: the row's first visual position), the patch its slot came from. A slot with
    no patch of its own (source -1: the extra token of merged patches) takes the last patch's position.
    sources: [B,L] patch index at the visual positions (ignored elsewhere)."""
    pos = full_positions(mask, is_visual, n_visual)
    first = np.argmax(is_visual, axis=1)
    start = pos[np.arange(len(pos)), first][:, None]
    patch = np.where(sources < 0, n_visual - 1, sources)
    return np.where(is_visual, start + patch, pos)
