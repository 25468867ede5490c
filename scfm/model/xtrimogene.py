"""xTrimoGene (scFoundation): an asymmetric encoder-decoder over the 19,264-gene vocabulary.

    packed cell (nonzero, unmasked genes + T + S)            (B, L)
      │ token_emb(values) + pos_emb(gene ids)                (B, L, E)
      ▼
    encoder: post-norm transformer, key padding mask         (B, L, E)   ──► embed_cells
      │ scatter back to gene positions; every other position gets
      │ token_emb(0) (unexpressed) or emb_mask (masked); + pos_emb
      ▼                                                      (B, 19266, E)
    decoder_embed → decoder (Performer / SDPA) → norm        (B, 19266, D) ──► gene_embeddings
      │ to_final
      ▼
    expression per gene                                      (B, 19264)    ──► predict_expression

The encoder sees ~10 % of the positions (the expressed genes), so most of the compute is spent
where the information is; the decoder is narrow and uses linear attention over all positions.
Inputs come from ``scfm.model.rda.collate`` (pretraining) or ``rda.prepare_inference``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.model.config import N_GENES, N_POS, PAD_POS, S_POS, T_POS, ModelConfig
from scfm.model.decoder import Decoder
from scfm.model.embedding import AutoDiscretization, gene_embedding
from scfm.model.encoder import Encoder
from scfm.model.packing import scatter_to_positions


class XTrimoGene(nn.Module):
    """The whole model. Module names mirror the official checkpoint (see ``docs/model.md``).

    All methods take the packed encoder input produced by ``scfm.model.rda``:

    gene_ids : ``(B, L)`` long positions 0..19265 (genes, T, S), padding = 19266.
    values : ``(B, L)`` float normalized expression; the T / S slots hold log10 totals.
    padding_mask : ``(B, L)`` bool, True = padding.

    Parameters
    ----------
    cfg
        Sizes; see :class:`~scfm.model.config.ModelConfig` and its presets.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_emb = AutoDiscretization(cfg.enc_dim, cfg.n_bins, cfg.bin_alpha)
        self.pos_emb = gene_embedding(cfg.enc_dim)  # (19267, E)
        self.encoder = Encoder(cfg)
        self.decoder_embed = nn.Linear(cfg.enc_dim, cfg.dec_dim)
        self.decoder = Decoder(cfg)
        self.norm = nn.LayerNorm(cfg.dec_dim)
        self.to_final = nn.Linear(cfg.dec_dim, 1)

    # ----------------------------------------------------------------------------------- encoder
    def encode(
        self, gene_ids: Tensor, values: Tensor, padding_mask: Tensor, *, jagged: bool = False
    ) -> Tensor:
        """Encoder states ``(B, L, E)`` of the packed tokens (padded rows are meaningless).

        ``jagged=True`` (inference) skips the padding inside the encoder
        (:meth:`~scfm.model.encoder.Encoder.forward_jagged`); same result within fp tolerance.
        """
        gene_ids = gene_ids.masked_fill(padding_mask, PAD_POS)
        x = self.token_emb(values, pad=padding_mask) + self.pos_emb(gene_ids)  # (B, L, E)
        if jagged:
            return self.encoder.forward_jagged(x, padding_mask)
        return self.encoder(x, padding_mask)  # (B, L, E)

    # ----------------------------------------------------------------------------------- decoder
    def decode(
        self,
        h: Tensor,
        gene_ids: Tensor,
        padding_mask: Tensor,
        masked: Tensor | None = None,
    ) -> Tensor:
        """Decoder states ``(B, 19266, D)`` from encoder states ``h`` ``(B, L, E)``.

        ``masked`` ``(B, 19264)`` bool marks genes hidden from the encoder whose value the decoder
        must predict; they get the learned mask vector. Every position not in the encoder and not
        masked is an unexpressed gene and gets the value embedding of 0.
        """
        B, _, E = h.shape
        # one embedding of the value 0 serves all ~90 % unexpressed positions
        zero = self.token_emb(h.new_zeros(())).to(h.dtype)  # (E,)
        base = zero.expand(B, N_POS, E)
        if masked is not None:
            m = F.pad(masked, (0, N_POS - masked.shape[1]))  # (B, N_POS); T and S never masked
            base = torch.where(m.unsqueeze(-1), self.token_emb.emb_mask.weight[0].to(h.dtype), base)
        x = scatter_to_positions(h, gene_ids, padding_mask, base)  # (B, N_POS, E)
        # as in the official model, encoder-derived positions receive pos_emb a second time
        x = x + self.pos_emb.weight[:N_POS]
        x = self.decoder_embed(x)  # (B, N_POS, D)
        return self.norm(self.decoder(x))  # (B, N_POS, D)

    def forward(
        self,
        gene_ids: Tensor,
        values: Tensor,
        padding_mask: Tensor,
        masked: Tensor | None = None,
    ) -> Tensor:
        """Predicted normalized expression ``(B, 19264)`` for every gene (pretraining forward).

        Train with ``rda.masked_mse(pred, batch.target, batch.masked)``.
        """
        h = self.encode(gene_ids, values, padding_mask)  # (B, L, E)
        z = self.decode(h, gene_ids, padding_mask, masked)  # (B, N_POS, D)
        return self.to_final(z).squeeze(-1)[:, :N_GENES]  # (B, N_GENES)

    # ------------------------------------------------------------------------ downstream outputs
    def embed_cells(self, gene_ids: Tensor, values: Tensor, padding_mask: Tensor) -> Tensor:
        """Cell embeddings ``(B, 4E)``: concat[S state, T state, max-pool, mean-pool].

        Pools run over the gene tokens only (T, S and padding excluded), as in the official
        ``pool_type="all"``. A cell without expressed genes gets zero pools.
        """
        h = self.encode(gene_ids, values, padding_mask)  # (B, L, E)
        valid = ~padding_mask
        is_gene = (valid & (gene_ids < N_GENES)).unsqueeze(-1)  # (B, L, 1)
        is_s = (valid & (gene_ids == S_POS)).unsqueeze(-1)
        is_t = (valid & (gene_ids == T_POS)).unsqueeze(-1)
        s = h.masked_fill(~is_s, 0.0).sum(dim=1)  # (B, E)
        t = h.masked_fill(~is_t, 0.0).sum(dim=1)  # (B, E)
        n = is_gene.sum(dim=1)  # (B, 1)
        mx = h.masked_fill(~is_gene, float("-inf")).amax(dim=1)  # (B, E)
        mx = torch.where(n > 0, mx, torch.zeros_like(mx))
        mean = h.masked_fill(~is_gene, 0.0).sum(dim=1) / n.clamp(min=1)  # (B, E)
        return torch.cat([s, t, mx, mean], dim=-1)  # (B, 4E)

    def gene_embeddings(self, gene_ids: Tensor, values: Tensor, padding_mask: Tensor) -> Tensor:
        """Context-specific gene embeddings ``(B, 19264, D)``: decoder states, nothing masked."""
        h = self.encode(gene_ids, values, padding_mask)
        return self.decode(h, gene_ids, padding_mask)[:, :N_GENES]  # (B, N_GENES, D)

    def predict_expression(
        self,
        gene_ids: Tensor,
        values: Tensor,
        padding_mask: Tensor,
        target_T: float | Tensor | None = None,
    ) -> Tensor:
        """Expression ``(B, 19264)`` of every gene, optionally at another read depth.

        Parameters
        ----------
        target_T
            log10 target total count, a float or a ``(B,)`` tensor. Overrides the T token, so
            ``target_T > S`` asks for a read-depth-enhanced profile; None keeps the input's T.
        """
        if target_T is not None:
            t = torch.as_tensor(target_T, dtype=values.dtype, device=values.device)
            t = t.reshape(-1, 1) if t.ndim == 1 else t  # (B, 1) or scalar
            values = torch.where(gene_ids == T_POS, t, values)
        return self.forward(gene_ids, values, padding_mask)

    # --------------------------------------------------------------------------------- utilities
    def redraw_projections(self, generator: torch.Generator | None = None) -> None:
        """Redraw the Performer random features (call every k steps in pretraining if wanted)."""
        self.decoder.redraw_projections(generator)
