//! The chat back end: handlers over small traits, and their adapters.
//!
//! - [`chat`]: the route handlers, taking API Gateway WebSocket events.
//! - [`store`]: where connections and messages live (DynamoDB).
//! - [`pusher`]: how frames reach sockets (in-process here, the API Gateway
//!   Management API on AWS).
//! - [`local`]: what `chat-local` adds to play API Gateway on one machine.

pub mod chat;
pub mod clock;
pub mod ids;
pub mod local;
pub mod pusher;
pub mod quiet_warning;
pub mod store;
