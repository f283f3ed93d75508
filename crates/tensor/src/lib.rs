//! Encrypted evaluation of convolutional networks on CKKS, single-image packing.
//!
//! A network of the form *convolution → polynomial activation → flatten → (dense →
//! activation)\* → dense* (CryptoNets, TenSEAL's `tenseal-cnn1`) is compiled into a
//! [`CnnPlan`]:
//!
//! * **Convolution, im2col packing.** The client lays out the im2col matrix of its image
//!   (Chillotti-style "client-side im2col", as TenSEAL does): with `K` kernel entries, `P`
//!   output positions and `C` output channels, padded to powers of two `P'`, `C'`, one block
//!   of `B = C'·P'` slots holds kernel entry `i` for every position, replicated for every
//!   channel; `m = slots/B` entries share a ciphertext, so the client sends `ceil(K/m)`
//!   ciphertexts. The server multiplies each by a plaintext of the matching weights, sums,
//!   rescales once, and adds the `m` blocks with `log2(m)` rotations. The result holds
//!   feature `(c, p)` at slot `c·P' + p` of every `B`-block: replicated with period `B`.
//! * **Dense layers, diagonal method** with the hybrid rectangular variant (Juvekar et al.,
//!   GAZELLE, USENIX Security 2018, §5.2) and baby-step giant-step with hoisted baby steps
//!   (Halevi–Shoup, CRYPTO 2018): an `n_o × n_i` layer on a vector replicated with period
//!   `n_i` costs `n1 - 1` hoisted and `n2 - 1` ordinary rotations (`n1·n2 = n_o`) plus
//!   `log2(n_i/n_o)` to fold, and leaves its output replicated with period `n_o`.
//! * **Activations**: `x²` is one multiplication, relinearization and rescale.
//!
//! Every stage reports the levels it consumes and the rotation steps (Galois keys) it needs,
//! so the parameter preset and the key set follow from the model.
#![forbid(unsafe_code)]

mod plan;

pub use plan::{CnnPlan, InputLayout, PlanError, StageCost};
