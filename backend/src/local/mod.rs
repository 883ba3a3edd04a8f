//! What chat-local adds to the handlers to play API Gateway on one machine:
//! the WebSocket front door ([`gateway`]), the Management API over HTTP
//! ([`management`]), the embedded DynamoDB engine ([`dynamodb`]) and the
//! web app's files ([`web_app`]).

pub mod dynamodb;
pub mod gateway;
pub mod lambda;
pub mod management;
pub mod web_app;
pub mod websocket;
