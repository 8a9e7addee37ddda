package nodeclient

import (
	"context"
	"time"

	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// DownstreamTimeout bounds one downstream call (a CA signature or a
// bundle update on the server), connection included.
const DownstreamTimeout = 10 * time.Second

// MintDownstreamX509CA asks the server to sign csr (DER) as an
// intermediate CA for the downstream entry entryID, for at most ttl (0:
// the longest allowed). It returns the CA chain (the CA first) and the
// trust domain's X.509 authorities, DER.
func (c *Client) MintDownstreamX509CA(ctx context.Context, entryID string, csr []byte, ttl time.Duration) (chain, authorities [][]byte, err error) {
	cctx, cancel := context.WithTimeout(ctx, DownstreamTimeout)
	defer cancel()
	if err := c.WaitReady(cctx, DownstreamTimeout); err != nil {
		return nil, nil, err
	}
	resp, err := c.node.MintDownstreamX509CA(cctx, &nodev1.MintDownstreamX509CARequest{EntryId: entryID, Csr: csr, PreferredTtl: int64(ttl / time.Second)})
	if err != nil {
		return nil, nil, c.mapError(ctx, err)
	}
	return resp.GetCaChain(), resp.GetX509Authorities(), nil
}

// PublishDownstreamJWTAuthority asks the server to publish the PKIX DER
// public key pub as JWT key kid of the downstream entry entryID until
// expires. It returns the expiry the server granted and the trust
// domain's bundle (JSON) with the key in it.
func (c *Client) PublishDownstreamJWTAuthority(ctx context.Context, entryID, kid string, pub []byte, expires time.Time) (time.Time, []byte, error) {
	cctx, cancel := context.WithTimeout(ctx, DownstreamTimeout)
	defer cancel()
	if err := c.WaitReady(cctx, DownstreamTimeout); err != nil {
		return time.Time{}, nil, err
	}
	resp, err := c.node.PublishDownstreamJWTAuthority(cctx, &nodev1.PublishDownstreamJWTAuthorityRequest{EntryId: entryID, KeyId: kid, PublicKey: pub, ExpiresAt: expires.Unix()})
	if err != nil {
		return time.Time{}, nil, c.mapError(ctx, err)
	}
	return time.Unix(resp.GetExpiresAt(), 0), resp.GetBundle(), nil
}
