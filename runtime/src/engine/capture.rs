//! Hidden-state capture: the graph evaluation callback that hands llama.cpp's final hidden
//! state (`result_norm`) to the own output product.

use super::*;

/// Receives the final hidden state from the graph evaluation callback.
pub(super) struct HiddenCapture {
    pub(super) n_embd: usize,
    /// Rows of `n_embd`, appended per micro-batch of the current decode.
    pub(super) hidden: Vec<f32>,
    /// The tensor did not look as expected; llama.cpp computed the logits itself.
    pub(super) declined: bool,
}

/// The [`HiddenCapture`] the context's callback writes to, owned through a raw pointer: the
/// C side holds the same pointer, so no Rust reference to it may live across a decode.
pub(super) struct CaptureCell(pub(super) std::ptr::NonNull<HiddenCapture>);

impl CaptureCell {
    pub(super) fn new(n_embd: usize) -> Self {
        let boxed = Box::new(HiddenCapture {
            n_embd,
            hidden: Vec::new(),
            declined: false,
        });
        Self(std::ptr::NonNull::from(Box::leak(boxed)))
    }

    pub(super) fn as_ptr(&self) -> *mut HiddenCapture {
        self.0.as_ptr()
    }

    /// The capture, between decodes.
    pub(super) fn get(&mut self) -> &mut HiddenCapture {
        // SAFETY: a live allocation of ours; the callback only runs inside `decode`, which
        // holds no reference to it while llama.cpp runs.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for CaptureCell {
    fn drop(&mut self) {
        // SAFETY: leaked from a Box in `new`, freed once; the session drops its context
        // (the only other holder of the pointer) before this field.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Name llama.cpp gives the normalised final hidden state (of the rows that want logits).
pub(super) const HIDDEN_TENSOR: &[u8] = b"result_norm";

/// ggml's graph evaluation callback: asks for the final hidden state, copies it into the
/// [`HiddenCapture`] behind `user` and stops the graph there (the output product is ours).
pub(super) unsafe extern "C" fn capture_hidden(
    t: *mut llama_cpp_sys_2::ggml_tensor,
    ask: bool,
    user: *mut std::ffi::c_void,
) -> bool {
    // SAFETY: ggml passes a live tensor.
    let t = unsafe { &*t };
    // Called for every node of every graph: compare the name's first bytes and its end in
    // place (no length scan).
    let name = &t.name[..=HIDDEN_TENSOR.len()];
    let is_hidden = name[HIDDEN_TENSOR.len()] == 0
        && name.iter().zip(HIDDEN_TENSOR).all(|(&c, &h)| c as u8 == h);
    if !is_hidden {
        // Not asked for; and when told about it, carry on.
        return !ask;
    }
    if ask {
        return true;
    }
    // SAFETY: `user` is the session's `CaptureCell` pointer, alive as long as the context.
    let cap = unsafe { &mut *(user as *mut HiddenCapture) };
    let row = cap.n_embd * std::mem::size_of::<f32>();
    if t.type_ != llama_cpp_sys_2::GGML_TYPE_F32
        || t.ne[0] as usize != cap.n_embd
        || t.nb[1] != row
        || t.ne[2] != 1
        || t.ne[3] != 1
        || t.data.is_null()
    {
        cap.declined = true;
        return true;
    }
    let n = t.ne[1] as usize * cap.n_embd;
    // SAFETY: a contiguous F32 host tensor of `ne[1]` rows of `n_embd` (checked above).
    cap.hidden
        .extend_from_slice(unsafe { std::slice::from_raw_parts(t.data as *const f32, n) });
    false
}

/// Sets the graph evaluation callback, which llama-cpp-2 0.1.160 has no setter for.
pub(super) fn with_eval_callback(
    mut params: LlamaContextParams,
    user: *mut std::ffi::c_void,
) -> LlamaContextParams {
    // `LlamaContextParams` is a struct of one field, the C struct; equal sizes leave that
    // field no offset but 0, so the wrapper can be written through as the C struct.
    const _: () = assert!(
        std::mem::size_of::<LlamaContextParams>()
            == std::mem::size_of::<llama_cpp_sys_2::llama_context_params>()
    );
    // SAFETY: see above; the pointer is to a live, exclusively borrowed value.
    let raw = unsafe {
        &mut *(&mut params as *mut LlamaContextParams as *mut llama_cpp_sys_2::llama_context_params)
    };
    raw.cb_eval = Some(capture_hidden);
    raw.cb_eval_user_data = user;
    params
}
