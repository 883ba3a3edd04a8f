//! What chat-local adds to the handlers to play API Gateway on one machine:
//! the WebSocket front door ([`gateway`]), the Management API over HTTP
//! ([`management`]), the embedded DynamoDB engine ([`dynamodb`]) and the
//! web app's files ([`web_app`]).

mod admission;
pub mod client_address;
pub mod dynamodb;
mod events;
pub mod gateway;
mod handshake;
pub mod http;
pub mod lambda;
pub mod management;
mod session;
pub mod web_app;
pub mod websocket;
