use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("invalid spec: {0}")]
    Spec(#[from] sslab_shared::SpecError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("the loss became {value} at step {step}; the last good checkpoint is kept")]
    NonFiniteLoss { step: usize, value: f32 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Data(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;
