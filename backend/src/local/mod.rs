//! What chat-local adds to the handlers to play API Gateway on one machine:
//! the WebSocket front door ([`gateway`]), the Management API over HTTP
//! ([`management`]) and the embedded DynamoDB engine ([`dynamodb`]).

pub mod dynamodb;
pub mod gateway;
pub mod lambda;
pub mod management;
pub mod websocket;
