"""ST-GCN pose encoder of Uni-Sign / Geo-Sign (Geo-Sign supplement, Listings 1-3; the released
Uni-Sign code, models.py and stgcn_layers/, where the papers are silent).

One spatio-temporal graph-convolution stream per body part (body 9, left hand 21, right hand 21,
face 18 nodes). Each stream: Linear(3 -> 64) per node, a spatial chain 64 -> 64 -> 128 -> 256
(temporal kernel 1), then -- for hands and face -- the detached feature of one body node (left
wrist, right wrist, nose), then a temporal chain of three 256-channel blocks (temporal kernel 5),
and a mean over nodes. The four (B, T, 256) streams are concatenated, a learned part embedding is
added and a Linear maps them to the language model's width.

With the defaults this is the released network tensor for tensor (`lightning_modules.init_weights`
maps its checkpoints): distance partitioning, the release's ReLUs and its conv biases. One
deliberate difference: padded frames are zeroed before every temporal convolution, so a clip's
output does not depend on what it is batched with. The release pads a batch by repeating each
clip's last frame and convolves over those copies, so its real frames near a clip's end change
with the batch's longest clip; on unpadded input the two compute the same.

Layout inside the streams is (B, C, T, V), the convention of ST-GCN; the input projection's
permute leaves it channels-last in memory, which oneDNN's convolutions keep (and which gave the
most accurate float32 gradients of the layouts tried).

Speed (``benchmarks/encoder.py``): the encoder runs the release's arithmetic
part by part and is bound by its convolutions (oneDNN, about 2/3 of a training step on 2 CPU
cores), so it stays as it is: fusing both hands into one pass, GEMM/bmm graph convolutions, a
nodes-first layout, NCHW and NHWC variants and in-place BatchNorm/ReLU/sum outputs were
measured and did not pay (benchmarks/encoder.py's docstring).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from datamodules.keypoints import BODY_CONTEXT_NODE, PART_ANCHOR, PART_EDGES, PART_NAMES, PART_NODES

STRATEGIES = ("uniform", "distance", "spatial")


def hop_distance(num_nodes: int, edges: Sequence[tuple[int, int]]) -> Tensor:
    """All-pairs shortest-path length (in edges) of an undirected graph; ``inf`` if unreachable.

    Returns (V, V) float64.
    """
    for i, j in edges:
        if not (0 <= i < num_nodes and 0 <= j < num_nodes):
            raise ValueError(f"edge ({i}, {j}) is outside a graph of {num_nodes} nodes")
    # Graph structure is computed on the CPU whatever the default device (e.g. a meta-device build).
    reach = torch.eye(num_nodes, dtype=torch.bool, device="cpu")
    step = reach.clone()
    for i, j in edges:
        step[i, j] = step[j, i] = True
    dist = torch.full((num_nodes, num_nodes), float("inf"), dtype=torch.float64, device="cpu")
    dist[reach] = 0
    # Breadth-first growth of the reachable set: after d steps, reach holds all pairs within d hops.
    for d in range(1, num_nodes):
        grown = (reach.double() @ step.double()) > 0
        dist[grown & ~reach] = d
        if torch.equal(grown, reach):
            break
        reach = grown
    return dist


class Graph:
    """Skeleton graph and its ST-GCN adjacency kernels ``A`` of shape (K, V, V).

    Neighbours are nodes within ``max_hop`` hops (self included). The adjacency is
    column-normalised, ``A @ D^-1`` with D the neighbour count of the *receiving* node, to
    match the aggregation ``out[w] = sum_v x[v] A[v, w]`` of :class:`GraphConv` (so every column of
    ``A.sum(0)`` sums to 1). Partition strategies (ST-GCN, Yan et al. 2018, Sec. 3.6):

    - ``uniform``: one kernel, all neighbours alike (K = 1);
    - ``distance``: one kernel per hop distance 0..max_hop (K = max_hop + 1);
    - ``spatial``: the root itself, then per hop two kernels split by the distance to the
      ``center`` node: senders at least as far from the center as the receiving root, and
      senders closer to it (K = 2 * max_hop + 1). The grouping of equidistant neighbours follows
      the reference ST-GCN code.

    The distance to the center uses the full shortest path. The reference code truncates it at
    ``max_hop`` (``inf`` beyond), which makes every node beyond ``max_hop`` of the center look
    equidistant; here the partition follows the definition instead.
    """

    def __init__(self, num_nodes: int, edges: Sequence[tuple[int, int]], center: int,
                 strategy: str = "distance", max_hop: int = 1) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown partition strategy {strategy!r}; expected one of {STRATEGIES}")
        if not 0 <= center < num_nodes:
            raise ValueError(f"center node {center} is outside a graph of {num_nodes} nodes")
        if max_hop < 1:
            raise ValueError(f"max_hop must be >= 1, got {max_hop}")
        self.num_nodes, self.center, self.strategy, self.max_hop = num_nodes, center, strategy, max_hop
        self.hop = hop_distance(num_nodes, edges)  # (V, V)
        self.A = self._adjacency().float()  # (K, V, V)

    @classmethod
    def for_part(cls, part: str, strategy: str = "distance", max_hop: int = 1) -> "Graph":
        """The graph of one Uni-Sign part; centers are the wrist (hands), nose tip (face), nose (body)."""
        if part not in PART_NODES:
            raise ValueError(f"unknown part {part!r}; expected one of {PART_NAMES}")
        # The body has no anchor in keypoints.PART_ANCHOR; its node 0 (nose) is Uni-Sign's center.
        return cls(PART_NODES[part], PART_EDGES[part], PART_ANCHOR.get(part, 0), strategy, max_hop)

    def _adjacency(self) -> Tensor:
        hop = self.hop
        near = hop <= self.max_hop
        # Column normalisation: every receiving node w averages over its neighbours.
        norm = near.double() / near.double().sum(0, keepdim=True)  # (V, V)
        if self.strategy == "uniform":
            return norm[None]
        if self.strategy == "distance":
            return torch.stack([norm * (hop == d) for d in range(self.max_hop + 1)])
        # spatial: compare the sender's (v) and the receiver's (w) distance to the center.
        to_center = hop[:, self.center]
        sender_closer = to_center[:, None] < to_center[None, :]  # (V, V), [v, w]
        kernels = [norm * (hop == 0)]
        for d in range(1, self.max_hop + 1):
            at_d = hop == d
            kernels += [norm * (at_d & ~sender_closer), norm * (at_d & sender_closer)]
        return torch.stack(kernels)


class GraphConv(nn.Module):
    """Spatial graph convolution, Eq. (1) of the supplement: ``sum_k A_k X W_k``, A learnable."""

    def __init__(self, in_channels: int, out_channels: int, A: Tensor) -> None:
        super().__init__()
        self.num_kernels = A.shape[0]
        self.conv = nn.Conv2d(in_channels, out_channels * self.num_kernels, kernel_size=1)
        # Learnable adjacency ("adaptive" in Uni-Sign), initialised at the partitioned graph.
        self.A = nn.Parameter(A.clone())

    def forward(self, x: Tensor) -> Tensor:
        B, _, T, V = x.shape
        x = self.conv(x).view(B, self.num_kernels, -1, T, V)  # (B, K, C, T, V)
        return torch.einsum("bkctv,kvw->bctw", x, self.A)  # (B, C, T, V)


class STGCNBlock(nn.Module):
    """Uni-Sign's ST-GCN block: graph conv -> BN -> ReLU, then (if ``temporal_kernel > 1``) a
    masked temporal conv -> BN -> dropout; plus a residual (identity or 1x1 conv + BN); then ReLU.

    Without a temporal conv this is ``relu(relu(bn(gcn(x))) + residual(x))``, as in the released
    code, where the graph unit ends in its own ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor,
                 temporal_kernel: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd and positive (same-length padding), got {temporal_kernel}")
        self.gcn = GraphConv(in_channels, out_channels, A)
        self.bn = nn.BatchNorm2d(out_channels)
        self.tcn = None
        if temporal_kernel > 1:
            self.tcn = nn.Sequential(
                nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), padding=(temporal_kernel // 2, 0)),
                nn.BatchNorm2d(out_channels),
                nn.Dropout(dropout),
            )
        self.residual = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1), nn.BatchNorm2d(out_channels))
        for conv in self.bn_fed_convs():
            # The release's biases, kept so its state dicts load tensor for tensor, but frozen (and
            # zero unless loaded): in front of a BatchNorm their gradient is exactly zero, and
            # training them would only turn rounding noise into lr-sized Adam steps (and break
            # bit-exact resume). The BatchNorm shift is the trained bias.
            nn.init.zeros_(conv.bias)
            conv.bias.requires_grad_(False)

    def bn_fed_convs(self) -> list[nn.Conv2d]:
        """The temporal and residual convolutions, each followed by a BatchNorm."""
        return [seq[0] for seq in (self.tcn, self.residual) if isinstance(seq, nn.Sequential)]

    def forward(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        """x (B, C_in, T, V), frame_mask (B, T) bool -> (B, C_out, T, V)."""
        y = torch.relu(self.bn(self.gcn(x)))
        if self.tcn is not None:
            # Zero padded frames so the temporal conv sees exactly the zero padding it would see
            # at the end of an unpadded sequence: real frames never depend on padded ones.
            y = self.tcn(y * frame_mask[:, None, :, None])
        return torch.relu(y + self.residual(x))


class PartStream(nn.Module):
    """One part's ST-GCN stream: Linear(3 -> C0), spatial chain, optional context, temporal chain."""

    def __init__(self, graph: Graph, hidden: Sequence[int], temporal_blocks: int,
                 temporal_kernel: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(3, hidden[0])
        self.spatial = nn.ModuleList(
            STGCNBlock(c_in, c_out, graph.A, temporal_kernel=1)
            for c_in, c_out in zip(hidden[:-1], hidden[1:]))
        self.temporal = nn.ModuleList(
            STGCNBlock(hidden[-1], hidden[-1], graph.A, temporal_kernel=temporal_kernel, dropout=dropout)
            for _ in range(temporal_blocks))

    def forward(self, x: Tensor, frame_mask: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T, V, 3), frame_mask (B, T), context (B, C, T, 1) or None.

        Returns the node-averaged features (B, T, C) and the spatial-chain output (B, C, T, V).
        """
        h = self.proj(x).permute(0, 3, 1, 2)  # (B, C0, T, V)
        for block in self.spatial:
            h = block(h, frame_mask)
        spatial = h  # (B, C, T, V)
        if context is not None:
            h = h + context
        for block in self.temporal:
            h = block(h, frame_mask)
        return h.mean(dim=3).transpose(1, 2), spatial  # (B, T, C)


class PoseEncoder(nn.Module):
    """Four-part ST-GCN encoder: parts -> (B, T, out_dim) embeddings for the language model.

    ``forward`` also returns the per-part (B, T, hidden[-1]) streams (zero at padded frames) for
    the hyperbolic branch. With ``share_hands`` (Uni-Sign) both hands use one stream, unmirrored.
    Padded frames never reach real frames through the temporal convolutions (the release's do,
    see the module docstring); in training mode they still enter the BatchNorm batch statistics,
    as in Uni-Sign.
    """

    def __init__(self, out_dim: int,  # mT5 width (hidden_dim 768 for mT5-base), Table 3
                 # The released weights' partitioning (Uni-Sign models.py: Graph(strategy='distance')):
                 # 2 kernels. Supplement C.1's prose names spatial configuration (3 kernels), but
                 # its graph listing implements only uniform and distance.
                 strategy: str = "distance",
                 share_hands: bool = True,
                 hidden: Sequence[int] = (64, 64, 128, 256),  # Linear(3->64), then the spatial chain
                 temporal_blocks: int = 3,  # temporal chain of three blocks, Listing 2
                 temporal_kernel: int = 5,  # temporal kernel size, Listing 2
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(hidden) < 2:
            raise ValueError(f"hidden needs the input projection width and at least one block width, got {hidden}")
        if temporal_blocks < 0:
            raise ValueError(f"temporal_blocks must be >= 0, got {temporal_blocks}")
        self.share_hands = share_hands
        self.stream_of = {p: ("hands" if share_hands and p in ("left", "right") else p) for p in PART_NAMES}
        self.streams = nn.ModuleDict({
            key: PartStream(Graph.for_part(part, strategy), hidden, temporal_blocks, temporal_kernel, dropout)
            for part, key in self.stream_of.items()})
        width = hidden[-1] * len(PART_NAMES)
        self.part_embedding = nn.Parameter(torch.zeros(width))  # zero-initialised as in Uni-Sign
        self.out = nn.Linear(width, out_dim)
        nn.init.trunc_normal_(self.out.weight, std=0.02)  # Uni-Sign's _init_weights for Linear layers
        nn.init.zeros_(self.out.bias)

    def _check(self, parts: dict[str, Tensor], frame_mask: Tensor) -> None:
        if frame_mask.dim() != 2 or frame_mask.dtype != torch.bool:
            raise ValueError(f"frame_mask must be a (B, T) bool tensor, got {frame_mask.dtype} {tuple(frame_mask.shape)}")
        for part in PART_NAMES:
            if part not in parts:
                raise ValueError(f"missing pose part {part!r}; expected keys {PART_NAMES}")
            want = (*frame_mask.shape, PART_NODES[part], 3)
            if tuple(parts[part].shape) != want:
                raise ValueError(f"pose part {part!r} has shape {tuple(parts[part].shape)}, expected {want}")

    def forward(self, parts: dict[str, Tensor], frame_mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """parts: {name: (B, T, V, 3)}, frame_mask (B, T) bool.

        Returns embeddings (B, T, out_dim) and {name: (B, T, C)} part features.
        """
        self._check(parts, frame_mask)
        features = {}
        features["body"], body_spatial = self.streams["body"](parts["body"], frame_mask)
        for part in PART_NAMES[1:]:
            # Body posture as fixed context: detached, so part losses never update the body stream.
            context = body_spatial[..., BODY_CONTEXT_NODE[part], None].detach()  # (B, C, T, 1)
            features[part], _ = self.streams[self.stream_of[part]](parts[part], frame_mask, context)
        keep = frame_mask[..., None].to(features["body"].dtype)  # (B, T, 1)
        features = {part: f * keep for part, f in features.items()}
        fused = torch.cat([features[p] for p in PART_NAMES], dim=-1) + self.part_embedding  # (B, T, 4C)
        return self.out(fused), features
