//! The CPU kernels under the model: sparse products (`sparse`), the fused likelihood and its
//! gradient (`fused`), and their scalar mathematics (`math`). Each hot loop is compiled twice, plain
//! and with AVX2, and chosen at run time by `has_avx2` (the optimiser's update does the same).

/// `avx2_dispatch!(fn name(args) -> T = body);` defines `name`, which runs `body` (an
/// `#[inline(always)]` function of the same arguments) compiled for 8-wide AVX2 vectors where the
/// CPU has them, else as built (the portable build targets 4-wide SSE2): the one dispatch of the
/// hot loops.
macro_rules! avx2_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::kernels::has_avx2() {
                    // SAFETY: the CPU runs AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

pub mod fused;
pub mod math;
pub mod sparse;

/// Whether the CPU runs AVX2 (checked once by the standard library, then cached).
#[inline(always)]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
