//! `GET /.well-known/jwks.json`: the public keys of bff's `private_key_jwt` client
//! authentication, for a provider registered with this URL as the client's `jwks_uri`.

use actix_web::{HttpResponse, web};

use crate::client_keys::ClientKeys;

pub async fn jwks(keys: web::Data<ClientKeys>) -> HttpResponse {
    // Short: a provider should see a rotation (a new first key) soon after it is rolled out.
    HttpResponse::Ok().insert_header(("cache-control", "public, max-age=300")).json(keys.jwks())
}
