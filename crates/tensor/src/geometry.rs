//! Tensor geometry: shapes of feature maps and the index arithmetic of convolutions.
//!
//! A feature map of shape `c × h × w` is flattened channel-major, `c·h·w + y·w + x`
//! (PyTorch's `NCHW` without the batch axis). All size arithmetic here is checked: shapes come
//! from files, and a product that overflows is an error, never a wrapped value.

use serde::{Deserialize, Serialize};

/// Shape of one example's activation: `channels × height × width` (dense layers have
/// `height = width = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

/// Largest number of features a shape may have (2^26): far beyond any network that fits in
/// CKKS slots, small enough that no product of two such sizes overflows.
pub const MAX_FEATURES: usize = 1 << 26;

impl Shape {
    /// Number of features, `c·h·w`, if it is at most [`MAX_FEATURES`].
    pub fn checked_len(&self) -> Option<usize> {
        self.c.checked_mul(self.h)?.checked_mul(self.w).filter(|&n| n <= MAX_FEATURES)
    }

    /// Number of features, `c·h·w`. Shapes built by [`crate::Shape`]'s users through checked
    /// inference ([`Shape::checked_len`]) never saturate; an oversized shape saturates at
    /// `usize::MAX` instead of wrapping.
    pub fn len(&self) -> usize {
        self.c.saturating_mul(self.h).saturating_mul(self.w)
    }

    /// Whether the shape holds no feature.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat index of `(c, y, x)`.
    pub fn index(&self, c: usize, y: usize, x: usize) -> usize {
        (c * self.h + y) * self.w + x
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.c, self.h, self.w)
    }
}

/// Geometry of a 2-D convolution with square kernels and zero padding on every side: which
/// input feature each im2col entry reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvGeom {
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding per side.
    pub padding: usize,
}

impl ConvGeom {
    /// The geometry of a convolution of `input` with `out_channels` kernels of side `kernel`.
    ///
    /// # Errors
    /// A message if a size is zero, the kernel is larger than the padded input, or a size
    /// overflows.
    pub fn new(
        input: Shape,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self, String> {
        if kernel == 0 || stride == 0 || out_channels == 0 {
            return Err("conv2d needs kernel, stride and channels above zero".into());
        }
        let pad = |d: usize| padding.checked_mul(2).and_then(|p| p.checked_add(d));
        let (h, w) = match (pad(input.h), pad(input.w)) {
            (Some(h), Some(w)) => (h, w),
            _ => return Err(format!("conv2d padding {padding} overflows")),
        };
        if h < kernel || w < kernel {
            return Err(format!("conv2d kernel {kernel} larger than padded input {h}×{w}"));
        }
        let output = Shape { c: out_channels, h: (h - kernel) / stride + 1, w: (w - kernel) / stride + 1 };
        if output.checked_len().is_none() || input.checked_len().is_none() || kernel > 1 << 12 {
            return Err(format!("conv2d {input} → {output} with kernel {kernel} is too large"));
        }
        Ok(Self { input, output, kernel, stride, padding })
    }

    /// For output position `p = oy·ow + ox` and column `j = c·k² + ky·k + kx`, the input
    /// feature index, or `None` in the padding.
    #[inline]
    pub fn source(&self, p: usize, j: usize) -> Option<usize> {
        let k = self.kernel;
        let (oy, ox) = (p / self.output.w, p % self.output.w);
        let (c, r) = (j / (k * k), j % (k * k));
        let (ky, kx) = (r / k, r % k);
        let y = (oy * self.stride + ky) as isize - self.padding as isize;
        let x = (ox * self.stride + kx) as isize - self.padding as isize;
        if y < 0 || x < 0 || y >= self.input.h as isize || x >= self.input.w as isize {
            None
        } else {
            Some(self.input.index(c, y as usize, x as usize))
        }
    }

    /// Rows of im2col per example (output positions).
    pub fn positions(&self) -> usize {
        self.output.h * self.output.w
    }

    /// Columns of im2col (`in_channels·k²`).
    pub fn cols(&self) -> usize {
        self.input.c * self.kernel * self.kernel
    }
}

/// Geometry of average pooling over `kernel × kernel` windows with a stride, no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolGeom {
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    /// Window side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
}

impl PoolGeom {
    /// The geometry of `kernel × kernel` pooling of `input` with `stride`.
    ///
    /// # Errors
    /// A message if the window does not fit or a size is zero.
    pub fn new(input: Shape, kernel: usize, stride: usize) -> Result<Self, String> {
        if kernel == 0 || stride == 0 || input.h < kernel || input.w < kernel {
            return Err(format!("avgpool2d {kernel}/{stride} does not fit {input}"));
        }
        let output = Shape { c: input.c, h: (input.h - kernel) / stride + 1, w: (input.w - kernel) / stride + 1 };
        Ok(Self { input, output, kernel, stride })
    }
}
