"""Draws docs/images/crop_masks.png from the pack's own templates (run from the repository root)."""
import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np, cv2, torch
from bfr_core.align import ffhq_template
from bfr_core.masks import template_mask
from bfr_core.identity.guidance import feature_mask
from bfr_core.identity.recognizers import arcface_box
S=512
base=np.full((S,S,3),0.93,np.float32)
paste=template_mask(S).numpy()
feat=feature_mask(S).numpy()
panels=[]
for title, m, col in [("paste mask (ellipse)", paste, (0.2,0.7,0.3)), ("identity-guidance mask (features)", feat, (0.85,0.3,0.2))]:
    img=base*(1-0.6*m[...,None])+np.array(col,np.float32)*0.6*m[...,None]
    img=(img*255).astype(np.uint8).copy()
    for x,y in ffhq_template(S).numpy():
        cv2.circle(img,(int(round(x)),int(round(y))),6,(40,40,40),-1)
    if "identity" in title:
        x0,y0,x1,y1=arcface_box(S)
        cv2.rectangle(img,(int(x0),int(y0)),(int(x1),int(y1)),(60,60,200),2)
        cv2.putText(img,"ArcFace 112 crop",(int(x0)+6,int(y0)+22),cv2.FONT_HERSHEY_SIMPLEX,0.6,(60,60,200),2)
    cv2.putText(img,title,(14,30),cv2.FONT_HERSHEY_SIMPLEX,0.75,(30,30,30),2)
    cv2.rectangle(img,(0,0),(S-1,S-1),(120,120,120),1)
    panels.append(img)
fig=np.concatenate(panels,1)
cv2.imwrite('docs/images/crop_masks.png', fig[:,:,::-1])
